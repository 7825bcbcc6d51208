"""The decision request and answer, and their mapping onto the scenario's model.

A request reports services and sites in domain terms; :class:`StateMapper`
turns it into a :class:`mecrl.serving.decide.FleetState` of scenario
indices, or raises :class:`RequestError` naming the offending field.

| request field | meaning |
|---|---|
| ``slot`` | slot of the episode the policy was trained on (progress feature) |
| ``services[].id`` | the orchestrator's name of the service, unique |
| ``services[].current_site``, ``access_site`` | site numbers of the scenario |
| ``services[].runtime``, ``isolation``, ``tenant`` | as in the scenario |
| ``services[].service_class`` | a class of the scenario, or omitted: then the |
| | one class that the other fields match |
| ``services[].state_mb``, ``memory_mb``, ``cpu_cores``, ``slo_ms`` | optional; |
| | when given, must be the class's |
| ``services[].recent_access_sites`` | the user's access sites of the H - 1 |
| | slots before this one, oldest first; required exactly when the |
| | scenario keeps ``history_slots`` H, refused otherwise |
| ``services[].position_m``, ``velocity_mps`` | the user's position [x, y] |
| | in the scenario's metric frame and its velocity over the last slot; |
| | required exactly when the scenario sets ``motion_horizons_slots`` or |
| | ``plan_window_slots``, refused otherwise |
| ``sites[].id`` | site number |
| ``sites[].cpu_cores_used``, ``memory_mb_used`` | load, services of the request |
| | included; a site left out is taken as full (the cloud never fills) |
| ``sites[].runtimes``, ``zone`` | optional; when given, must be the scenario's |

Sites are numbered as the scenario numbers them: edge sites first, the
cloud (if any) last. A service's class fixes every figure the policy's
features use (SLO, state, image, migration mode), so a service must be an
instance of one of the scenario's classes; its memory is the class's, plus
the runtime's overhead, as in the simulator.

The Open Inference Protocol's (v2) tensor request and answer, for the raw
model, are here too (:class:`InferRequest`, :class:`InferResponse`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mecrl.backend import UserMotion
from mecrl.runtimes import RUNTIME_NAMES
from mecrl.scenario import Scenario
from mecrl.services import ServiceClassConfig
from mecrl.serving.decide import KINDS, Decisions, FleetState

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

Name = Annotated[str, Field(min_length=1, max_length=128)]
Dimension = Annotated[int, Field(ge=0, le=2**31 - 1)]
Parameters = dict[str, str | int | float | bool]
SiteNumber = Annotated[int, Field(ge=0, le=2**31 - 1)]
Amount = Annotated[float, Field(ge=0.0)]
Runtime = Literal["runc", "kata"]
Vector = Annotated[list[float], Field(min_length=2, max_length=2)]
Isolation = Literal["shared", "sandboxed", "dedicated"]


class ServiceReport(BaseModel):
    """One service as the orchestrator sees it."""

    model_config = _STRICT

    id: Name
    current_site: SiteNumber
    access_site: SiteNumber
    runtime: Runtime
    isolation: Isolation
    tenant: Name
    service_class: Name | None = None
    state_mb: Amount | None = None
    memory_mb: Amount | None = None
    cpu_cores: Amount | None = None
    slo_ms: Annotated[float, Field(gt=0.0)] | None = None
    recent_access_sites: Annotated[list[SiteNumber], Field(max_length=1024)] | None = (
        None
    )
    position_m: Vector | None = None
    velocity_mps: Vector | None = None


class SiteReport(BaseModel):
    """One site's load, and optionally what it offers."""

    model_config = _STRICT

    id: SiteNumber
    cpu_cores_used: Amount
    memory_mb_used: Amount
    runtimes: Annotated[list[Runtime], Field(max_length=len(RUNTIME_NAMES))] | None = (
        None
    )
    zone: Name | None = None


class DecisionRequest(BaseModel):
    """Services and sites of one slot."""

    model_config = _STRICT

    slot: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    services: Annotated[list[ServiceReport], Field(min_length=1)]
    sites: list[SiteReport] = Field(default_factory=list)


class Decision(BaseModel):
    """What one service should do this slot."""

    id: str
    decision: Literal["stay", "move", "refused"]
    site: int
    """Where the service runs this slot (its current site unless it moves)."""
    proposed_site: int
    """The site the model proposed; differs from ``site`` when refused."""


class DecisionResponse(BaseModel):
    """The decisions of one request, in the order of its services."""

    model: str
    scenario: str
    decisions: list[Decision]


class ServiceColumns(BaseModel):
    """The services of a batch as columns: entry i of every list is service i.

    The fields mean what :class:`ServiceReport`'s do; the class figures
    (``state_mb`` and the rest) are not taken, so a service is known by its
    class name, or by runtime and isolation when those fit one class.
    """

    model_config = _STRICT

    id: Annotated[list[Name], Field(min_length=1)]
    current_site: list[SiteNumber]
    access_site: list[SiteNumber]
    runtime: list[Runtime]
    isolation: list[Isolation]
    tenant: list[Name]
    service_class: list[Name] | None = None
    recent_access_sites: (
        list[Annotated[list[SiteNumber], Field(max_length=1024)]] | None
    ) = None
    position_m: list[Vector] | None = None
    velocity_mps: list[Vector] | None = None


class SiteColumns(BaseModel):
    """Sites' loads as columns: entry j of every list is site j."""

    model_config = _STRICT

    id: list[SiteNumber] = Field(default_factory=list)
    cpu_cores_used: list[Amount] = Field(default_factory=list)
    memory_mb_used: list[Amount] = Field(default_factory=list)


class ColumnarDecisionRequest(BaseModel):
    """Services and sites of one slot, as columns (for large batches)."""

    model_config = _STRICT

    slot: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    services: ServiceColumns
    sites: SiteColumns = Field(default_factory=SiteColumns)


class DecisionColumns(BaseModel):
    """The decisions of a batch as columns, in the order of its services."""

    id: list[str]
    decision: list[Literal["stay", "move", "refused"]]
    site: list[int]
    proposed_site: list[int]


class ColumnarDecisionResponse(BaseModel):
    """The answer to a :class:`ColumnarDecisionRequest`."""

    model: str
    scenario: str
    decisions: DecisionColumns


class RequestError(ValueError):
    """A request that does not fit the scenario.

    Args:
        loc: Path of the offending field (``("services", 3, "current_site")``).
        message: What is wrong with it.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{'.'.join(map(str, loc))}: {message}")


_CLASS_CACHE_SIZE = 4096
"""Most service descriptions whose class is remembered."""

_CHECKED_FIGURES = ("state_mb", "memory_mb", "cpu_cores", "slo_ms")


class _ClassKey(NamedTuple):
    """What a request says of a service's class; reports are grouped by it."""

    service_class: str | None
    runtime: str
    isolation: str
    state_mb: float | None = None
    memory_mb: float | None = None
    cpu_cores: float | None = None
    slo_ms: float | None = None


@dataclass(frozen=True)
class _Batch:
    """A request's services and sites, the same whichever form it came in."""

    ids: list[str]
    current: np.ndarray
    access: np.ndarray
    classes: list[tuple[Any, ...]]
    """Each service's :class:`_ClassKey` fields, as a tuple (the first three
    for columns, which give no class figures)."""
    tenants: list[str]
    recent: list[list[int] | None]
    position: list[list[float] | None]
    velocity: list[list[float] | None]
    site_ids: np.ndarray
    site_cpu: np.ndarray
    site_memory: np.ndarray
    site_reports: list[tuple[int, SiteReport]]
    """The site reports that say what a site offers, with their positions."""
    columns: bool = False
    """Whether the request came as columns."""

    def loc(self, part: str, index: int, field: str) -> tuple[str | int, ...]:
        """Return the request path of entry ``index``'s ``field`` of ``part``."""
        return (part, field, index) if self.columns else (part, index, field)


def _batch_of_reports(request: DecisionRequest) -> _Batch:
    services, sites = request.services, request.sites
    return _Batch(
        ids=[x.id for x in services],
        current=np.array([x.current_site for x in services], dtype=np.int64),
        access=np.array([x.access_site for x in services], dtype=np.int64),
        classes=[
            _ClassKey(
                x.service_class,
                x.runtime,
                x.isolation,
                x.state_mb,
                x.memory_mb,
                x.cpu_cores,
                x.slo_ms,
            )
            for x in services
        ],
        tenants=[x.tenant for x in services],
        recent=[x.recent_access_sites for x in services],
        position=[x.position_m for x in services],
        velocity=[x.velocity_mps for x in services],
        site_ids=np.array([x.id for x in sites], dtype=np.int64),
        site_cpu=np.array([x.cpu_cores_used for x in sites], dtype=np.float64),
        site_memory=np.array([x.memory_mb_used for x in sites], dtype=np.float64),
        site_reports=[
            (j, x)
            for j, x in enumerate(sites)
            if x.runtimes is not None or x.zone is not None
        ],
    )


def _batch_of_columns(request: ColumnarDecisionRequest) -> _Batch:
    services, sites = request.services, request.sites
    n = len(services.id)
    for field in ServiceColumns.model_fields:
        column = getattr(services, field)
        if column is not None and len(column) != n:
            raise RequestError(
                ("services", field),
                f"has {len(column)} entries, but id has {n}: one per service",
            )
    m = len(sites.id)
    for field in ("cpu_cores_used", "memory_mb_used"):
        if len(getattr(sites, field)) != m:
            raise RequestError(
                ("sites", field),
                f"has {len(getattr(sites, field))} entries, but id has {m}: "
                "one per site",
            )
    names: list[str | None] = [None] * n
    if services.service_class is not None:
        names = list(services.service_class)
    recent: list[list[int] | None] = [None] * n
    if services.recent_access_sites is not None:
        recent = list(services.recent_access_sites)
    position: list[list[float] | None] = [None] * n
    if services.position_m is not None:
        position = list(services.position_m)
    velocity: list[list[float] | None] = [None] * n
    if services.velocity_mps is not None:
        velocity = list(services.velocity_mps)
    return _Batch(
        ids=services.id,
        current=np.array(services.current_site, dtype=np.int64),
        access=np.array(services.access_site, dtype=np.int64),
        # columns give no class figures: a key of the first three fields,
        # the rest default when it is resolved
        classes=list(zip(names, services.runtime, services.isolation, strict=True)),
        tenants=services.tenant,
        recent=recent,
        position=position,
        velocity=velocity,
        site_ids=np.array(sites.id, dtype=np.int64),
        site_cpu=np.array(sites.cpu_cores_used, dtype=np.float64),
        site_memory=np.array(sites.memory_mb_used, dtype=np.float64),
        site_reports=[],
        columns=True,
    )


@dataclass(frozen=True)
class _Resolved:
    cls: int
    field: str
    message: str


class StateMapper:
    """Maps requests onto one scenario's indices.

    Args:
        scenario: The scenario the policy was trained on.
        max_batch: Most services one request may hold.
        max_tenants: Most distinct tenants one request may name.
    """

    def __init__(self, scenario: Scenario, max_batch: int, max_tenants: int) -> None:
        self.scenario = scenario
        self.max_batch = max_batch
        self.max_tenants = max_tenants
        self._classes: dict[tuple[Any, ...], _Resolved] = {}
        sites = scenario.sites
        self._site_runtimes = [
            sorted(RUNTIME_NAMES[r] for r in np.flatnonzero(sites.runtimes[i]))
            for i in range(scenario.n_sites)
        ]
        self._no_cpu = unreported_load(sites.cpu_cores)
        self._no_memory = unreported_load(sites.memory_mb)

    def state(self, request: DecisionRequest | ColumnarDecisionRequest) -> FleetState:
        """Return the request as scenario indices.

        Raises:
            RequestError: If a site is unknown, a service matches no class, a
                service runs where its class may not, ids repeat, a reported
                load is below what the request's services there use, columns
                differ in length, or the batch is over the limit.
        """
        s = self.scenario
        if isinstance(request, ColumnarDecisionRequest):
            batch = _batch_of_columns(request)
        else:
            batch = _batch_of_reports(request)
        if len(batch.ids) > self.max_batch:
            raise RequestError(
                ("services",),
                f"{len(batch.ids)} services exceed this server's limit of "
                f"{self.max_batch} per request",
            )
        if request.slot >= s.config.episode_slots:
            raise RequestError(
                ("slot",),
                f"must lie in [0, {s.config.episode_slots}): the episode length "
                "the policy was trained on",
            )
        _check_unique(batch, "services", batch.ids)
        current, access = batch.current, batch.access
        self._check_range(batch, "current_site", current, s.n_sites, "sites")
        self._check_range(
            batch, "access_site", access, s.n_access, "access (edge) sites"
        )
        # services of one description share a class: resolve each once
        code = {key: self._class_of(batch, key) for key in dict.fromkeys(batch.classes)}
        cls = np.array(list(map(code.__getitem__, batch.classes)), np.int64)
        tenant, n_tenants = self._tenants(batch.tenants)
        runs = s.constraints.static[cls, current]
        if not runs.all():
            i = int(np.flatnonzero(~runs)[0])
            raise RequestError(
                batch.loc("services", i, "current_site"),
                f"class {s.classes.names[cls[i]]!r} may not run at site "
                f"{current[i]} (runtime, zone, size or dedicated-host rules)",
            )
        cpu_used, memory_used = self._loads(batch, cls)
        return FleetState(
            cls,
            tenant,
            current,
            access,
            request.slot,
            cpu_used,
            memory_used,
            n_tenants,
            self._history(batch),
            self._motion(batch),
        )

    def _history(self, batch: _Batch) -> np.ndarray | None:
        """Return each user's access sites of the last H slots, oldest first."""
        s = self.scenario
        slots = s.config.history_slots
        if slots == 0:
            if batch.recent.count(None) < len(batch.recent):
                i = next(i for i, x in enumerate(batch.recent) if x is not None)
                raise RequestError(
                    batch.loc("services", i, "recent_access_sites"),
                    f"scenario {s.config.name!r} keeps no history; leave it out",
                )
            return None
        for i, given in enumerate(batch.recent):
            if given is None or len(given) != slots - 1:
                raise RequestError(
                    batch.loc("services", i, "recent_access_sites"),
                    f"scenario {s.config.name!r} keeps history_slots = {slots}: "
                    f"list the access sites of the {slots - 1} slots before this "
                    "one, oldest first",
                )
        past = np.array(batch.recent, dtype=np.int64).reshape(len(batch.ids), -1)
        for k in range(slots - 1):
            self._check_range(
                batch, "recent_access_sites", past[:, k], s.n_access, "access sites"
            )
        return np.concatenate([past, batch.access[:, None]], axis=1)

    def _motion(self, batch: _Batch) -> UserMotion | None:
        """Return each user's reported position and velocity."""
        name = self.scenario.config.name
        wanted = self.scenario.config.tracks_motion
        columns = {"position_m": batch.position, "velocity_mps": batch.velocity}
        for field, column in columns.items():
            given = [x is not None for x in column]
            if not wanted and any(given):
                raise RequestError(
                    batch.loc("services", given.index(True), field),
                    f"scenario {name!r} projects no motion; leave it out",
                )
            if wanted and not all(given):
                raise RequestError(
                    batch.loc("services", given.index(False), field),
                    f"scenario {name!r} projects users' motion: give the user's "
                    "position [x, y] in metres and its velocity in m/s",
                )
        if not wanted:
            return None
        return UserMotion(
            np.array(batch.position, dtype=np.float64),
            np.array(batch.velocity, dtype=np.float64),
        )

    def _check_range(
        self, batch: _Batch, field: str, values: np.ndarray, limit: int, what: str
    ) -> None:
        bad = np.flatnonzero(values >= limit)
        if bad.size:
            i = int(bad[0])
            raise RequestError(
                batch.loc("services", i, field),
                f"unknown site {values[i]}; {what} of scenario "
                f"{self.scenario.config.name!r} are 0 to {limit - 1}",
            )

    def _class_of(self, batch: _Batch, key: tuple[Any, ...]) -> int:
        """Return the class of services described by ``key``."""
        resolved = self._classes.get(key)
        if resolved is None:
            resolved = self._resolve(_ClassKey(*key))
            if len(self._classes) >= _CLASS_CACHE_SIZE:
                # requests choose the keys: keep the memory bounded
                self._classes.clear()
            self._classes[key] = resolved
        if resolved.cls < 0:
            # keys come in order of first use: this is the first bad service
            index = batch.classes.index(key)
            raise RequestError(
                batch.loc("services", index, resolved.field), resolved.message
            )
        return resolved.cls

    def _resolve(self, service: _ClassKey) -> _Resolved:
        configs = self.scenario.config.services
        names = [c.name for c in configs]
        if service.service_class is not None:
            if service.service_class not in names:
                return _Resolved(
                    -1,
                    "service_class",
                    f"unknown class {service.service_class!r}; classes of scenario "
                    f"{self.scenario.config.name!r} are {', '.join(names)}",
                )
            c = names.index(service.service_class)
            mismatch = _mismatch(service, configs[c])
            if mismatch is not None:
                return _Resolved(-1, *mismatch)
            return _Resolved(c, "", "")
        matching = [
            c for c, config in enumerate(configs) if not _mismatch(service, config)
        ]
        if len(matching) == 1:
            return _Resolved(matching[0], "", "")
        found = (
            "no class"
            if not matching
            else "classes " + ", ".join(names[c] for c in matching)
        )
        return _Resolved(
            -1,
            "service_class",
            f"the service matches {found} of scenario "
            f"{self.scenario.config.name!r}; name one of {', '.join(names)}",
        )

    def _tenants(self, names: list[str]) -> tuple[np.ndarray, int]:
        known = {name: i for i, name in enumerate(self.scenario.classes.tenant_names)}
        for name in dict.fromkeys(names):
            known.setdefault(name, len(known))
        index = np.array(list(map(known.__getitem__, names)), np.int64)
        if len(known) > self.max_tenants:
            raise RequestError(
                ("services",),
                f"{len(known)} distinct tenants exceed this server's limit of "
                f"{self.max_tenants} per request",
            )
        return index, len(known)

    def _loads(self, batch: _Batch, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.scenario
        ids = batch.site_ids
        unknown = np.flatnonzero(ids >= s.n_sites)
        if unknown.size:
            j = int(unknown[0])
            raise RequestError(
                batch.loc("sites", j, "id"),
                f"unknown site {ids[j]}; sites of scenario {s.config.name!r} are "
                f"0 to {s.n_sites - 1}",
            )
        if ids.size and np.bincount(ids).max() > 1:
            _check_unique(batch, "sites", ids.tolist())
        for j, site in batch.site_reports:
            self._check_site(j, site)
        loads = []
        for field, reported, per_class, unreported in (
            ("cpu_cores_used", batch.site_cpu, s.classes.cpu_cores, self._no_cpu),
            (
                "memory_mb_used",
                batch.site_memory,
                s.classes.memory_mb,
                self._no_memory,
            ),
        ):
            needed = np.bincount(batch.current, per_class[cls], minlength=s.n_sites)
            # sums of the same figures in another order differ in the last bits
            short = np.flatnonzero(reported < needed[ids] * (1.0 - 1e-9) - 1e-9)
            if short.size:
                j = int(short[0])
                raise RequestError(
                    batch.loc("sites", j, field),
                    f"{reported[j]} is less than the {needed[ids[j]]} that the "
                    f"request's services at site {ids[j]} use",
                )
            load = unreported.copy()
            load[ids] = reported
            loads.append(load)
        return loads[0], loads[1]

    def _check_site(self, j: int, site: SiteReport) -> None:
        s = self.scenario
        offered = self._site_runtimes[site.id]
        if site.runtimes is not None and sorted(set(site.runtimes)) != offered:
            raise RequestError(
                ("sites", j, "runtimes"),
                f"site {site.id} offers {offered} in the scenario the policy was "
                f"trained on, not {sorted(set(site.runtimes))}",
            )
        zone = s.sites.zone_names[s.sites.zone[site.id]]
        if site.zone is not None and site.zone != zone:
            raise RequestError(
                ("sites", j, "zone"),
                f"site {site.id} lies in zone {zone!r} in the scenario, not "
                f"{site.zone!r}",
            )


def unreported_load(capacity: np.ndarray) -> np.ndarray:
    """Return the load taken for sites a request leaves out: full.

    The cloud never fills, so it gets no load at all.
    """
    return np.where(np.isfinite(capacity), np.inf, 0.0)


def _mismatch(service: _ClassKey, config: ServiceClassConfig) -> tuple[str, str] | None:
    """Return the first field where ``service`` differs from class ``config``."""
    for field in ("runtime", "isolation"):
        given, expected = getattr(service, field), getattr(config, field)
        if given != expected:
            return field, f"{given!r} is not class {config.name!r}'s {expected!r}"
    for field in _CHECKED_FIGURES:
        given, expected = getattr(service, field), getattr(config, field)
        if given is not None and not math.isclose(given, expected, rel_tol=1e-9):
            return field, f"{given} is not class {config.name!r}'s {expected}"
    return None


def _check_unique(batch: _Batch, part: str, ids: Sequence[str | int]) -> None:
    if len(set(ids)) == len(ids):
        return
    seen: dict[str | int, int] = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise RequestError(
                batch.loc(part, i, "id"), f"id {key!r} repeats (also entry {seen[key]})"
            )
        seen[key] = i


def answer(
    request: DecisionRequest, decisions: Decisions, model: str, scenario: str
) -> dict[str, object]:
    """Return the JSON-ready answer of :class:`DecisionResponse`'s shape."""
    kinds = np.array(KINDS)[decisions.kind].tolist()
    rows = zip(
        (service.id for service in request.services),
        kinds,
        decisions.site.tolist(),
        decisions.proposed_site.tolist(),
        strict=True,
    )
    return {
        "model": model,
        "scenario": scenario,
        "decisions": [
            {"id": i, "decision": k, "site": s, "proposed_site": p}
            for i, k, s, p in rows
        ],
    }


def answer_columns(
    request: ColumnarDecisionRequest, decisions: Decisions, model: str, scenario: str
) -> dict[str, object]:
    """Return the JSON-ready answer of :class:`ColumnarDecisionResponse`'s shape."""
    return {
        "model": model,
        "scenario": scenario,
        "decisions": {
            "id": request.services.id,
            "decision": np.array(KINDS)[decisions.kind].tolist(),
            "site": decisions.site.tolist(),
            "proposed_site": decisions.proposed_site.tolist(),
        },
    }


class InferInput(BaseModel):
    """A tensor of a v2 inference request."""

    model_config = _STRICT

    name: str
    shape: Annotated[list[Dimension], Field(min_length=1, max_length=8)]
    datatype: str
    data: list[float] | list[bool]
    parameters: Parameters | None = None


class InferRequestedOutput(BaseModel):
    """An output a v2 client asks for."""

    model_config = _STRICT

    name: str
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    """A v2 inference request."""

    model_config = _STRICT

    id: str | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[InferInput], Field(min_length=1, max_length=8)]
    outputs: list[InferRequestedOutput] | None = None


class InferOutput(BaseModel):
    """A tensor of a v2 inference answer."""

    name: str
    shape: list[int]
    datatype: Literal["INT64"]
    data: list[int]


class InferResponse(BaseModel):
    """A v2 inference answer."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]
