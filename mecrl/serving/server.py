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
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

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

Body = TypeVar("Body", DecisionRequest, ColumnarDecisionRequest)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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
        for kind in KINDS:
            self.decisions.labels(kind)


class RequestMetricsMiddleware:
    """Counts requests and times them, labelled by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, then count and time it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start_s = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "other")
            self.metrics.latency.labels(label).observe(time.perf_counter() - start_s)
            self.metrics.requests.labels(label, str(status[0])).inc()


def error_body(path: str, message: str) -> dict[str, str]:
    """Return an error answer: ``error`` on the v2 routes, as the protocol has it."""
    return {"error" if path.startswith("/v2") else "detail": message}


OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/openapi.json"})
"""Paths answered without a token: probes and the schema."""


class BearerMiddleware:
    """Answers 401 unless the request carries the bearer token.

    A middleware rather than a FastAPI dependency: resolving dependencies
    costs more than the decision itself on a one-service request.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = b"bearer " + token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on if it may be answered, else refuse it."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        # the scheme is case-insensitive; the token is compared in constant time
        scheme, _, credentials = given.partition(b" ")
        if hmac.compare_digest(scheme.lower() + b" " + credentials, self.expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            error_body(scope["path"], "missing or wrong bearer token"),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 to a request body over ``max_bytes``, before parsing it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized body, or pass the request on with its body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.max_bytes
        ):
            await self._refuse(scope, receive, send)
            return
        # read it all (chunked bodies declare no length), then replay it
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over the limit of {self.max_bytes} bytes"
        response = JSONResponse(error_body(scope["path"], message), status_code=413)
        await response(scope, receive, send)


class ProtocolError(ValueError):
    """A v2 request the model cannot run on; answered 400 with its message."""


def create_app(bundle: Bundle, settings: ServerSettings) -> FastAPI:
    """Return the application serving ``bundle``."""
    app = FastAPI(
        title="mecrl policy server",
        version=__version__,
        description="Migration decisions for edge services from a trained policy.",
        docs_url=None,
        redoc_url=None,
    )
    metrics = Metrics()
    decider = Decider(bundle)
    mapper = StateMapper(bundle.scenario, settings.max_batch, settings.max_tenants)
    _add_error_handlers(app)
    _add_schemas(app, DecisionRequest, ColumnarDecisionRequest)

    async def decide(request: Request, form: type[Body]) -> tuple[Body, Decisions]:
        # pydantic parses the bytes itself: twice as fast as json.loads first
        try:
            body = form.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(_in_body(exc)) from None
        result = decider.decide(mapper.state(body))
        counts = np.bincount(result.kind, minlength=len(KINDS))
        for kind, count in zip(KINDS, counts.tolist(), strict=True):
            if count:
                metrics.decisions.labels(kind).inc(count)
        return body, result

    unfit: dict[int | str, dict[str, Any]] = {
        422: {"description": "a field is malformed or does not fit the scenario"}
    }

    @app.post(
        "/v1/decisions",
        response_model=DecisionResponse,
        responses={**_ERRORS, **unfit},
        openapi_extra=_json_body(DecisionRequest),
    )
    async def decisions(request: Request) -> Response:
        """Decide, for each service, whether to stay or to which site to move."""
        body, result = await decide(request, DecisionRequest)
        name = bundle.scenario.config.name
        return Response(
            _JSON.dump_json(answer(body, result, bundle.name, name)),
            media_type="application/json",
        )

    @app.post(
        "/v1/decisions/columns",
        response_model=ColumnarDecisionResponse,
        responses={**_ERRORS, **unfit},
        openapi_extra=_json_body(ColumnarDecisionRequest),
    )
    async def decision_columns(request: Request) -> Response:
        """The same decisions for a batch sent as columns, one list per field."""
        body, result = await decide(request, ColumnarDecisionRequest)
        name = bundle.scenario.config.name
        return Response(
            _JSON.dump_json(answer_columns(body, result, bundle.name, name)),
            media_type="application/json",
        )

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
    # the last added runs first: count, then check the token, then the size
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.token is not None:
        app.add_middleware(BearerMiddleware, token=settings.token)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


_JSON = TypeAdapter(dict[str, Any])
"""Writes answers; pydantic's serialiser is several times faster than json's."""


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """Return the OpenAPI request body of a route that parses ``model`` itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                }
            },
        }
    }


def _add_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Publish ``models`` in the OpenAPI components, for :func:`_json_body`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path, operations in schema["paths"].items():
                if path not in OPEN_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            components = schema["components"].setdefault("schemas", {})
            for model in models:
                found = model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
                components.update(found.pop("$defs", {}))
                components[model.__name__] = found
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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

    async def unfit(request: Request, exc: Exception) -> Response:
        error = cast(RequestError, exc)
        entry = {
            "loc": ["body", *error.loc],
            "msg": error.message,
            "type": "value_error",
        }
        return JSONResponse({"detail": [entry]}, status_code=422)

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
    app.add_exception_handler(RequestError, unfit)
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
