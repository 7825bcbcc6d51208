"""The HTTP server: decisions in domain terms, the raw model, health, metrics.

| method and path | auth | what |
|---|---|---|
| ``POST /v1/decisions`` | yes | services and sites in, a decision per service out |
| ``POST /v1/decisions/columns`` | yes | the same as columns (one list per field): |
| | | for large batches, about ten times cheaper to parse |
| ``GET /v1/bundle`` | yes | the bundle's manifest |
| ``GET /v2/health/live``, ``/v2/health/ready`` | no | Open Inference Protocol |
| | | (v2) liveness and readiness |
| ``GET /v2`` | yes | server metadata (v2) |
| ``GET /v2/models/{name}``, ``/v2/models/{name}/ready`` | yes | model |
| | | metadata and readiness (v2) |
| ``POST /v2/models/{name}/infer`` | yes | the raw model on v2 tensors: |
| | | ``observation`` (FP32) and ``mask`` (BOOL) in, ``action`` and |
| | | ``proposed`` (INT64) out |
| ``GET /metrics`` | yes | Prometheus text format |
| ``GET /openapi.json`` | no | the OpenAPI schema |

"auth" is a bearer token (``Authorization: Bearer TOKEN``) compared in
constant time, unless the server was started without one on purpose.
Malformed input gets 422 with the path of each bad field (400 with an
``error`` message on the v2 routes, as the protocol has it), a body over
the size limit 413, a missing or wrong token 401, an unknown model 404.
"""

from __future__ import annotations

import gc
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException

from mecrl import __version__
from mecrl.config import check, check_integer
from mecrl.envs.observation import FEATURES
from mecrl.serving.bundle import Bundle
from mecrl.serving.decide import KINDS, Decider, Decisions
from mecrl.serving.schema import (
    ColumnarDecisionRequest,
    ColumnarDecisionResponse,
    DecisionRequest,
    DecisionResponse,
    InferRequest,
    InferResponse,
    RequestError,
    StateMapper,
    answer,
    answer_columns,
)

logger = logging.getLogger(__name__)

Answer = Callable[[Any, Decisions, str, str], dict[str, object]]
"""Writes the JSON-ready answer of a request and its decisions."""


class DecisionRoute(NamedTuple):
    """One route that :class:`DecisionRoutes` answers."""

    path: str
    request: type[DecisionRequest] | type[ColumnarDecisionRequest]
    response: type[BaseModel]
    write: Answer
    summary: str


DECISION_ROUTES = (
    DecisionRoute(
        "/v1/decisions",
        DecisionRequest,
        DecisionResponse,
        answer,
        "Decide, for each service, whether to stay or to which site to move.",
    ),
    DecisionRoute(
        "/v1/decisions/columns",
        ColumnarDecisionRequest,
        ColumnarDecisionResponse,
        answer_columns,
        "The same decisions for a batch sent as columns, one list per field.",
    ),
)
"""The decision routes: what they parse, answer and how the schema says it."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
)  # fmt: skip
"""Bounds of the latency histogram, 100 us to 1 s."""

_HOPS_FROM_CURRENT = FEATURES.index("hops_from_current_10")


@dataclass(frozen=True)
class ServerSettings:
    """How the server guards itself."""

    token: str | None
    """Bearer token every guarded route needs; None serves without one."""
    max_batch: int = 10_000
    """Most services (or observation rows) in one request."""
    max_body_bytes: int = 16 * 2**20
    """Largest request body; larger ones get 413."""
    max_tenants: int = 1_000
    """Most distinct tenants in one decision request (memory is per tenant)."""

    def __post_init__(self) -> None:
        check(self.token is None or bool(self.token), "token", "must not be empty")
        for name in ("max_batch", "max_body_bytes", "max_tenants"):
            check_integer(name, getattr(self, name), minimum=1)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mecrl_requests",
            "HTTP requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mecrl_request_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.decisions = Counter(
            "mecrl_decisions",
            "Decisions returned, by kind (stay, move, refused)",
            ["kind"],
            registry=self.registry,
        )
        self._kinds = [self.decisions.labels(kind) for kind in KINDS]
        # labels() takes a lock and hashes its arguments: keep the children
        self._children: dict[tuple[str, int], tuple[Histogram, Counter]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count a request to ``route`` answered with ``status`` in ``seconds``."""
        children = self._children.get((route, status))
        if children is None:
            # routes are templates and statuses few: this stays small
            children = (
                self.latency.labels(route),
                self.requests.labels(route, str(status)),
            )
            self._children[route, status] = children
        children[0].observe(seconds)
        children[1].inc()

    def count_decisions(self, decisions: Decisions) -> None:
        """Count ``decisions`` by kind."""
        counts = np.bincount(decisions.kind, minlength=len(KINDS))
        for child, count in zip(self._kinds, counts.tolist(), strict=True):
            if count:
                child.inc(count)


def error_body(path: str, message: str) -> dict[str, str]:
    """Return an error answer: ``error`` on the v2 routes, as the protocol has it."""
    return {"error" if path.startswith("/v2") else "detail": message}


OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/openapi.json"})
"""Paths answered without a token: probes and the schema."""


class Front:
    """The server's entry: guards every request and answers decisions itself.

    Every request is timed and counted, needs the bearer token (except
    :data:`OPEN_PATHS`) and a body within the size limit. Decisions are then
    answered here, every other route by the FastAPI application. Decisions
    skip FastAPI because a one-service request is the hot path, and
    FastAPI's routing, dependency solving and middleware layers cost more
    than the decision itself; the schema still documents them.

    Args:
        app: The FastAPI application of every other route.
        decisions: Answers the decision routes.
        metrics: Where requests are counted and timed.
        settings: Token and body limit.
    """

    def __init__(
        self,
        app: FastAPI,
        decisions: DecisionRoutes,
        metrics: Metrics,
        settings: ServerSettings,
    ) -> None:
        self.app = app
        self.decisions = decisions
        self.metrics = metrics
        self.max_bytes = settings.max_body_bytes
        self.expected = (
            None if settings.token is None else b"bearer " + settings.token.encode()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request (or pass a lifespan or websocket scope on)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start_s = time.perf_counter()
        path = scope["path"]
        status, label = 500, "other"
        try:
            if path in self.decisions.routes:
                label = path
                status = await self._decide(scope, receive, send)
            else:
                status, label = await self._pass_on(scope, receive, send)
        finally:
            self.metrics.observe(label, status, time.perf_counter() - start_s)

    async def _decide(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer a decision route; return the status code."""
        path = scope["path"]
        if not self._authorised(scope):
            return await self._unauthorised(path, send)
        if scope["method"] != "POST":
            body = _JSON.dump_json({"detail": "Method Not Allowed"})
            await _send(send, 405, body, [(b"allow", b"POST")])
            return 405
        data = await self._body(scope, receive)
        if data is None:
            return await self._too_large(path, send)
        status, body = self.decisions.answer(path, data)
        await _send(send, status, body)
        return status

    async def _pass_on(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[int, str]:
        """Let FastAPI answer; return the status code and the route template."""
        path = scope["path"]
        if path not in OPEN_PATHS and not self._authorised(scope):
            return await self._unauthorised(path, send), _route_label(scope)
        data = await self._body(scope, receive)
        if data is None:
            return await self._too_large(path, send), _route_label(scope)
        status = [500]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, replay, send_status)
        return status[0], _route_label(scope)

    def _authorised(self, scope: Scope) -> bool:
        if self.expected is None:
            return True
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        # the scheme is case-insensitive; the token is compared in constant time
        scheme, _, credentials = given.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + credentials, self.expected)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """Return the whole body, or None if it is over the limit.

        A declared length over the limit is refused before reading; chunked
        bodies declare none, so the count goes on while reading.
        """
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _unauthorised(self, path: str, send: Send) -> int:
        body = _JSON.dump_json(error_body(path, "missing or wrong bearer token"))
        await _send(send, 401, body, [(b"www-authenticate", b"Bearer")])
        return 401

    async def _too_large(self, path: str, send: Send) -> int:
        message = f"request body over the limit of {self.max_bytes} bytes"
        await _send(send, 413, _JSON.dump_json(error_body(path, message)))
        return 413


def _route_label(scope: Scope) -> str:
    """The route template FastAPI matched, so that labels stay few."""
    return str(getattr(scope.get("route"), "path", "other"))


async def _send(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a whole JSON answer."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DecisionRoutes:
    """Answers ``POST /v1/decisions`` and ``/v1/decisions/columns``.

    Args:
        bundle: The loaded bundle.
        settings: Batch and tenant limits.
        metrics: Where decisions are counted by kind.
    """

    def __init__(
        self, bundle: Bundle, settings: ServerSettings, metrics: Metrics
    ) -> None:
        self.bundle = bundle
        self.decider = Decider(bundle)
        self.mapper = StateMapper(
            bundle.scenario, settings.max_batch, settings.max_tenants
        )
        self.metrics = metrics
        self.routes = {route.path: route for route in DECISION_ROUTES}

    def answer(self, path: str, data: bytes) -> tuple[int, bytes]:
        """Return the status code and JSON body answering ``data`` at ``path``."""
        route = self.routes[path]
        try:
            # pydantic parses the bytes itself: twice as fast as json.loads first
            request = route.request.model_validate_json(data)
            result = self.decider.decide(self.mapper.state(request))
        except ValidationError as exc:
            errors = [_error_entry(entry) for entry in _in_body(exc)]
            return 422, _JSON.dump_json({"detail": errors})
        except RequestError as error:
            entry = {
                "loc": ["body", *error.loc],
                "msg": error.message,
                "type": "value_error",
            }
            return 422, _JSON.dump_json({"detail": [entry]})
        self.metrics.count_decisions(result)
        scenario = self.bundle.scenario.config.name
        return 200, _JSON.dump_json(
            route.write(request, result, self.bundle.name, scenario)
        )


class ProtocolError(ValueError):
    """A v2 request the model cannot run on; answered 400 with its message."""


def create_app(bundle: Bundle, settings: ServerSettings) -> Front:
    """Return the application serving ``bundle``."""
    app = FastAPI(
        title="mecrl policy server",
        version=__version__,
        description="Migration decisions for edge services from a trained policy.",
        docs_url=None,
        redoc_url=None,
    )
    metrics = Metrics()
    _add_error_handlers(app)
    _add_schemas(app)

    @app.get("/v1/bundle", responses=_ERRORS)
    async def manifest() -> dict[str, Any]:
        """Return the bundle's manifest."""
        return bundle.manifest

    _add_inference_routes(app, bundle, settings)

    @app.get("/metrics", responses=_ERRORS)
    async def prometheus() -> Response:
        """Return the metrics in Prometheus' text format."""
        return Response(
            generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    # a first run allocates onnxruntime's buffers: do it before answering
    bundle.act(
        np.zeros((1, bundle.view.layout.size), np.float32),
        np.ones((1, bundle.view.layout.n_candidates), bool),
    )
    return Front(app, DecisionRoutes(bundle, settings, metrics), metrics, settings)


_JSON = TypeAdapter(dict[str, Any])
"""Writes answers; pydantic's serialiser is several times faster than json's."""


def _add_schemas(app: FastAPI) -> None:
    """Write the OpenAPI schema: FastAPI's routes, the decision routes, the token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            models = components.setdefault("schemas", {})
            for route in DECISION_ROUTES:
                schema["paths"][route.path] = _decision_operation(route)
                for model in (route.request, route.response):
                    found = model.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                    models.update(found.pop("$defs", {}))
                    models[model.__name__] = found
            for path, operations in schema["paths"].items():
                if path not in OPEN_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _decision_operation(route: DecisionRoute) -> dict[str, Any]:
    """Return the OpenAPI path item of a decision route."""

    def content(model: type[BaseModel]) -> dict[str, Any]:
        reference = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"application/json": {"schema": reference}}

    errors = {
        **_ERRORS,
        422: {"description": "a field is malformed or does not fit the scenario"},
    }
    return {
        "post": {
            "summary": route.summary,
            "operationId": f"post_{route.request.__name__}",
            "requestBody": {"required": True, "content": content(route.request)},
            "responses": {
                "200": {
                    "description": "a decision per service, in the request's order",
                    "content": content(route.response),
                },
                **{str(code): entry for code, entry in errors.items()},
            },
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token"},
    413: {"description": "request body over the size limit"},
}


def _in_body(error: ValidationError) -> list[dict[str, Any]]:
    """Return pydantic's errors with their paths starting at the body."""
    return [{**entry, "loc": ("body", *entry["loc"])} for entry in error.errors()]


def _add_error_handlers(app: FastAPI) -> None:
    async def invalid(request: Request, exc: Exception) -> Response:
        errors = [_error_entry(e) for e in cast(RequestValidationError, exc).errors()]
        if request.url.path.startswith("/v2"):
            text = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors
            )
            return JSONResponse({"error": text}, status_code=400)
        return JSONResponse({"detail": errors}, status_code=422)

    async def protocol(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def http_error(request: Request, exc: Exception) -> Response:
        error = cast(HTTPException, exc)
        return JSONResponse(
            error_body(request.url.path, error.detail),
            status_code=error.status_code,
            headers=error.headers,
        )

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ProtocolError, protocol)
    # the inference protocol words every error as {"error": message}
    app.add_exception_handler(HTTPException, http_error)


def _error_entry(error: Any) -> dict[str, Any]:
    """Keep where and what; drop the input, which may not be JSON (NaN)."""
    loc = [part if isinstance(part, int | str) else str(part) for part in error["loc"]]
    return {"loc": loc, "msg": str(error["msg"]), "type": str(error["type"])}


def _add_inference_routes(
    app: FastAPI, bundle: Bundle, settings: ServerSettings
) -> None:
    layout = bundle.view.layout
    shapes = {"observation": layout.size, "mask": layout.n_candidates}
    datatypes = {"observation": "FP32", "mask": "BOOL"}

    def model_or_404(name: str) -> None:
        if name != bundle.name:
            raise HTTPException(
                404, f"unknown model {name!r}; this server serves {bundle.name!r}"
            )

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        """Whether the server runs."""
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        """Whether the server answers inference requests."""
        return {"ready": True}

    @app.get("/v2", responses=_ERRORS)
    async def server_metadata() -> dict[str, Any]:
        """Server metadata of the inference protocol."""
        return {"name": "mecrl", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}", responses=_ERRORS)
    async def model_metadata(name: str) -> dict[str, Any]:
        """Model metadata of the inference protocol."""
        model_or_404(name)
        return {
            "name": bundle.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": key, "datatype": datatypes[key], "shape": [-1, shapes[key]]}
                for key in ("observation", "mask")
            ],
            "outputs": [
                {"name": key, "datatype": "INT64", "shape": [-1]}
                for key in ("action", "proposed")
            ],
        }

    @app.get("/v2/models/{name}/ready", responses=_ERRORS)
    async def model_ready(name: str) -> dict[str, Any]:
        """Whether the model answers."""
        model_or_404(name)
        return {"name": bundle.name, "ready": True}

    @app.post(
        "/v2/models/{name}/infer",
        response_model=InferResponse,
        responses={**_ERRORS, 400: {"description": "tensors the model cannot run on"}},
    )
    async def infer(name: str, request: InferRequest) -> Response:
        """Run the raw model on an observation and a mask tensor."""
        model_or_404(name)
        observation, mask = _tensors(request, shapes, datatypes, settings.max_batch)
        action, proposed = bundle.act(observation, mask)
        outputs = {"action": action, "proposed": proposed}
        wanted = [o.name for o in request.outputs] if request.outputs else list(outputs)
        for key in wanted:
            if key not in outputs:
                raise ProtocolError(
                    f"unknown output {key!r}; outputs are action, proposed"
                )
        return JSONResponse(
            {
                "model_name": bundle.name,
                "model_version": "1",
                "id": request.id,
                "outputs": [
                    {
                        "name": key,
                        "shape": [int(outputs[key].shape[0])],
                        "datatype": "INT64",
                        "data": outputs[key].tolist(),
                    }
                    for key in wanted
                ],
            }
        )


def _tensors(
    request: InferRequest,
    widths: dict[str, int],
    datatypes: dict[str, str],
    max_batch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the checked observation and mask of a v2 request."""
    given = {tensor.name: tensor for tensor in request.inputs}
    if sorted(given) != sorted(widths) or len(request.inputs) != len(widths):
        raise ProtocolError(
            f"inputs must be exactly observation and mask, got "
            f"{[t.name for t in request.inputs]}"
        )
    arrays: dict[str, np.ndarray] = {}
    for key, tensor in given.items():
        rows = tensor.shape[0]
        if tensor.datatype != datatypes[key]:
            raise ProtocolError(
                f"input {key}: datatype must be {datatypes[key]}, got {tensor.datatype}"
            )
        if len(tensor.shape) != 2 or tensor.shape[1] != widths[key]:
            raise ProtocolError(
                f"input {key}: shape must be [N, {widths[key]}], got {tensor.shape}"
            )
        if not 1 <= rows <= max_batch:
            raise ProtocolError(
                f"input {key}: N must lie in [1, {max_batch}], got {rows}"
            )
        if len(tensor.data) != rows * widths[key]:
            raise ProtocolError(
                f"input {key}: shape {tensor.shape} needs {rows * widths[key]} "
                f"values, got {len(tensor.data)}"
            )
        if isinstance(tensor.data[0], bool) != (key == "mask"):
            kind = "true/false" if key == "mask" else "numbers"
            raise ProtocolError(f"input {key}: data must be {kind}")
        dtype = np.bool_ if key == "mask" else np.float32
        arrays[key] = np.asarray(tensor.data, dtype=dtype).reshape(tensor.shape)
    observation, mask = arrays["observation"], arrays["mask"]
    if observation.shape[0] != mask.shape[0]:
        raise ProtocolError(
            f"observation has {observation.shape[0]} rows, mask {mask.shape[0]}"
        )
    if not np.isfinite(observation).all():
        raise ProtocolError("input observation: values must be finite in float32")
    _check_stay_allowed(observation, mask, widths["mask"])
    return observation, mask


def _check_stay_allowed(observation: np.ndarray, mask: np.ndarray, k: int) -> None:
    """Refuse masks that forbid staying: then no action would be allowed."""
    table = observation[:, :-1].reshape(observation.shape[0], k, -1)
    stays = mask & (table[:, :, _HOPS_FROM_CURRENT] == 0)
    bad = np.flatnonzero(~stays.any(axis=1))
    if bad.size:
        raise ProtocolError(
            f"row {int(bad[0])}: the mask must allow staying, a candidate whose "
            "hops_from_current_10 is 0 (candidate 0 with K candidates)"
        )


def freeze_heap() -> None:
    """Keep the objects alive now out of every later garbage collection.

    A full collection walks every object of the loaded libraries, about
    70 ms here, and would land on whichever request happens to trigger it.
    """
    gc.collect()
    gc.freeze()


def log_startup(host: str, port: int, settings: ServerSettings) -> None:
    """Warn about settings that expose the server."""
    loopback = host in ("127.0.0.1", "::1", "localhost")
    if settings.token is None and not loopback:
        logger.warning(
            "serving on %s without a token: anyone reaching it may ask", host
        )
