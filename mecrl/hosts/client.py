"""A client of the host agent's HTTP API, used by the controller and by peers."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mecrl.hosts.netns import connect_from


class AgentError(RuntimeError):
    """An agent refused a request or could not be reached.

    Args:
        url: The agent's base URL.
        status: HTTP status, or 0 when the agent could not be reached.
        message: The agent's explanation.
    """

    def __init__(self, url: str, status: int, message: str) -> None:
        self.url = url
        self.status = status
        super().__init__(f"{url}: {status or 'unreachable'}: {message}")


@dataclass(frozen=True)
class AgentClient:
    """Calls one host agent with a bearer token."""

    url: str
    """Base URL, ``http://ADDR:PORT`` or ``https://ADDR:PORT``."""
    token: str
    """Bearer token of the agent."""
    ca_file: str | None = None
    """CA bundle to verify an HTTPS agent with; the system's when None."""
    timeout_s: float = 120.0
    """Socket timeout of each request."""
    netns_path: str | None = None
    """Network namespace to connect from; the caller's when None (agents on
    a testbed may be reachable only from inside it)."""

    def _connection(self) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"agent URL needs a host and a port, got {self.url!r}")
        connection: http.client.HTTPConnection
        context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=self.ca_file)
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout_s, context=context
            )
        elif parts.scheme == "http":
            connection = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=self.timeout_s
            )
        else:
            raise ValueError(f"agent URL must be http or https, got {self.url!r}")
        if self.netns_path is not None:
            raw = connect_from(
                self.netns_path, parts.hostname, parts.port, self.timeout_s
            )
            if context is not None:
                raw = context.wrap_socket(raw, server_hostname=parts.hostname)
            connection.sock = raw
        return connection

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        upload: Path | None = None,
    ) -> dict[str, Any]:
        """Send one request; return the JSON answer.

        Args:
            method: HTTP method.
            path: Path under the base URL, with its query.
            body: JSON body, or None.
            upload: A file sent as the raw body instead of JSON.

        Raises:
            AgentError: On a non-2xx answer (with the agent's message) or when
                the agent cannot be reached.
        """
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            connection = self._connection()
        except OSError as exc:
            raise AgentError(self.url, 0, str(exc)) from None
        try:
            if upload is not None:
                headers["Content-Type"] = "application/octet-stream"
                headers["Content-Length"] = str(upload.stat().st_size)
                with upload.open("rb") as stream:
                    connection.request(method, path, body=stream, headers=headers)
            else:
                data = None if body is None else json.dumps(body).encode()
                if data is not None:
                    headers["Content-Type"] = "application/json"
                connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except OSError as exc:
            raise AgentError(self.url, 0, str(exc)) from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": raw.decode(errors="replace")[:200]}
        if not 200 <= response.status < 300:
            raise AgentError(self.url, response.status, answer.get("error", ""))
        result: dict[str, Any] = answer
        return result

    def get(self, path: str) -> dict[str, Any]:
        """GET ``path``."""
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` as JSON to ``path``."""
        return self.request("POST", path, body or {})

    def delete(self, path: str) -> dict[str, Any]:
        """DELETE ``path``."""
        return self.request("DELETE", path)


def image_query(ref: str) -> str:
    """Return the path that asks an agent whether image ``ref`` is present."""
    return "/v1/images?" + urllib.parse.urlencode({"ref": ref})
