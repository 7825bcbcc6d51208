"""The host agent's HTTP server: routing, authentication, JSON and errors.

The standard library's threading HTTP server carries the API: an edge host
then needs nothing beyond mecrl's core dependencies, and state archives are
plain request bodies written straight to disk.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mecrl.config import ConfigError, from_dict
from mecrl.hosts.agent import MAX_JSON_BYTES, Agent, ApiError, ServiceSpec
from mecrl.hosts.client import AgentError
from mecrl.hosts.config import HostAgentConfig, read_token
from mecrl.hosts.containerd import ContainerdError
from mecrl.hosts.netns import NetworkError

logger = logging.getLogger(__name__)

_ID = r"(?P<id>[^/]+)"
_ADDRESS = r"(?P<address>[^/]+)"

Handler = Callable[["Request"], dict[str, Any]]


@dataclass
class Request:
    """One parsed request, as route handlers see it."""

    agent: Agent
    match: re.Match[str]
    query: dict[str, str]
    body: dict[str, Any]
    upload: Path | None

    def field(self, name: str, kind: type = str) -> Any:
        """Return a required body field of type ``kind``.

        Raises:
            ApiError: 400 naming the field if it is missing or of another type.
        """
        if name not in self.body:
            raise ApiError(400, f"missing field {name!r}")
        value = self.body[name]
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ApiError(400, f"field {name!r} must be a {kind.__name__}")
        return value

    def only(self, *names: str) -> None:
        """Refuse body fields other than ``names``."""
        unknown = sorted(set(self.body) - set(names))
        if unknown:
            valid = ", ".join(names) or "none"
            raise ApiError(400, f"unknown field {unknown[0]!r}; valid: {valid}")


def _wait_s(request: Request) -> float:
    text = request.query.get("wait_s", "0")
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"wait_s must be a number, got {text!r}") from None
    if not 0.0 <= value <= 120.0:
        raise ApiError(400, f"wait_s must lie in [0, 120], got {value}")
    return value


def _ref(request: Request) -> str:
    ref = request.query.get("ref")
    if not ref:
        raise ApiError(400, "missing query parameter 'ref'")
    return ref


def _deploy(request: Request) -> dict[str, Any]:
    try:
        spec = from_dict(ServiceSpec, request.body)
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    return request.agent.deploy(spec)


def _send(request: Request) -> dict[str, Any]:
    request.only("peer", "mode")
    return request.agent.send(
        request.match["id"], request.field("peer"), request.field("mode")
    )


def _start(request: Request) -> dict[str, Any]:
    request.only("mode")
    return request.agent.start(request.match["id"], request.field("mode"))


def _rtt(request: Request) -> dict[str, Any]:
    request.only("targets", "count")
    targets = request.field("targets", list)
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ApiError(400, "field 'targets' must be a non-empty list of ADDR:PORT")
    count = request.body.get("count", 3)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 50:
        raise ApiError(400, f"field 'count' must be an integer in [1, 50], got {count}")
    return request.agent.rtt(targets, count)


def _address_body(action: Callable[[Agent, str], dict[str, Any]]) -> Handler:
    def handler(request: Request) -> dict[str, Any]:
        request.only("address")
        return action(request.agent, request.field("address"))

    return handler


def _address_path(action: Callable[[Agent, str], dict[str, Any]]) -> Handler:
    return lambda request: action(request.agent, request.match["address"])


def _service(action: Callable[[Agent, str], dict[str, Any]]) -> Handler:
    return lambda request: action(request.agent, request.match["id"])


def _route(request: Request) -> dict[str, Any]:
    request.only("address", "toward")
    return request.agent.route(request.field("address"), request.field("toward"))


def _import_image(request: Request) -> dict[str, Any]:
    request.only("ref", "tar")
    return request.agent.import_image(request.field("ref"), request.field("tar"))


def _send_image(request: Request) -> dict[str, Any]:
    request.only("ref", "peer")
    return request.agent.send_image(request.field("ref"), request.field("peer"))


def _receive_image(request: Request) -> dict[str, Any]:
    assert request.upload is not None  # PUT routes always read the body to a file
    return request.agent.receive_image(_ref(request), request.upload)


def _receive_state(request: Request) -> dict[str, Any]:
    assert request.upload is not None  # PUT routes always read the body to a file
    return request.agent.receive(request.match["id"], request.upload)


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("GET", "/v1/info", lambda r: r.agent.info()),
        ("GET", "/v1/images", lambda r: r.agent.image_present(_ref(r))),
        ("POST", "/v1/images/import", _import_image),
        ("POST", "/v1/images/send", _send_image),
        ("PUT", "/v1/images", _receive_image),
        ("GET", "/v1/services", lambda r: r.agent.list_services()),
        ("POST", "/v1/services", _deploy),
        (
            "GET",
            f"/v1/services/{_ID}",
            lambda r: r.agent.status(r.match["id"], _wait_s(r)),
        ),
        ("DELETE", f"/v1/services/{_ID}", _service(Agent.delete)),
        ("POST", f"/v1/services/{_ID}/stop", _service(Agent.stop)),
        ("POST", f"/v1/services/{_ID}/pause", _service(Agent.pause)),
        ("POST", f"/v1/services/{_ID}/resume", _service(Agent.resume)),
        ("POST", f"/v1/services/{_ID}/checkpoint", _service(Agent.checkpoint)),
        ("POST", f"/v1/services/{_ID}/restore-local", _service(Agent.restore_local)),
        ("POST", f"/v1/services/{_ID}/send", _send),
        ("PUT", f"/v1/services/{_ID}/state", _receive_state),
        ("POST", f"/v1/services/{_ID}/start", _start),
        ("POST", "/v1/addresses", _address_body(Agent.claim)),
        ("DELETE", f"/v1/addresses/{_ADDRESS}", _address_path(Agent.release)),
        ("POST", "/v1/routes", _route),
        ("DELETE", f"/v1/routes/{_ADDRESS}", _address_path(Agent.unroute)),
        ("POST", "/v1/drops", _address_body(Agent.drop)),
        ("DELETE", f"/v1/drops/{_ADDRESS}", _address_path(Agent.undrop)),
        ("POST", "/v1/rtt", _rtt),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        parts = urllib.parse.urlsplit(self.path)
        upload: Path | None = None
        try:
            if parts.path == "/healthz" and method == "GET":
                self._answer(200, {"name": self.server.agent.config.name, "ok": True})
                return
            self._authenticate()
            handler, match = self._find(method, parts.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            body: dict[str, Any] = {}
            if method == "PUT":
                upload = self._read_upload()
            else:
                body = self._read_json()
            result = handler(Request(self.server.agent, match, query, body, upload))
            self._answer(
                201 if method == "POST" and parts.path == "/v1/services" else 200,
                result,
            )
        except ApiError as exc:
            self._answer(exc.status, {"error": str(exc)})
        except ValueError as exc:
            # raised by the checks of addresses and specs in the request
            self._answer(400, {"error": str(exc)})
        except (ContainerdError, NetworkError, AgentError) as exc:
            logger.warning("%s %s failed: %s", method, parts.path, exc)
            self._answer(502, {"error": str(exc)})
        except Exception as exc:
            logger.exception("%s %s failed", method, parts.path)
            self._answer(500, {"error": f"internal error: {exc}"})
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise ApiError(401, "missing bearer token (Authorization: Bearer TOKEN)")
        given = header.removeprefix("Bearer ").strip().encode()
        if not hmac.compare_digest(given, self.server.agent.token.encode()):
            raise ApiError(403, "wrong token")

    def _find(self, method: str, path: str) -> tuple[Handler, re.Match[str]]:
        allowed = []
        for route_method, pattern, handler in ROUTES:
            match = pattern.fullmatch(path)
            if match:
                if route_method == method:
                    return handler, match
                allowed.append(route_method)
        if allowed:
            raise ApiError(
                405, f"{method} not allowed on {path}; use {', '.join(allowed)}"
            )
        raise ApiError(404, f"no such endpoint: {path}")

    def _length(self) -> int:
        text = self.headers.get("Content-Length")
        if text is None:
            return 0
        if not text.isdigit():
            raise ApiError(400, f"bad Content-Length {text!r}")
        return int(text)

    def _read_json(self) -> dict[str, Any]:
        length = self._length()
        if length == 0:
            return {}
        if length > MAX_JSON_BYTES:
            raise ApiError(413, f"JSON body over {MAX_JSON_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise ApiError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        return body

    def _read_upload(self) -> Path:
        if "Content-Length" not in self.headers:
            raise ApiError(411, "PUT needs a Content-Length")
        left = self._length()
        folder = self.server.agent.root / "tmp"
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as out:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    raise ApiError(400, "body ended before Content-Length")
                out.write(chunk)
                left -= len(chunk)
        return Path(out.name)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP(S) server.

    Args:
        agent: What the API does.
    """

    daemon_threads = True

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        super().__init__(agent.config.address, _Handler)
        c = agent.config
        if c.tls_cert is not None and c.tls_key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(c.tls_cert, c.tls_key)
            self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        """The base URL the server answers on."""
        host, port = self.socket.getsockname()[:2]
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host}:{port}"


def make_server(config: HostAgentConfig) -> AgentServer:
    """Return a server for ``config``, bound and ready to ``serve_forever``."""
    return AgentServer(Agent(config, read_token(config.token_file)))


def serve_in_thread(config: HostAgentConfig) -> tuple[AgentServer, threading.Thread]:
    """Start a server in a daemon thread; stop it with ``server.shutdown()``."""
    server = make_server(config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
