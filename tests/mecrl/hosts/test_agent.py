"""The host agent against a real containerd with real busybox containers."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import (
    COUNTER_ARGS,
    TOKEN,
    RunningAgent,
    criu_works,
    remove_all,
    start_agent,
    talk,
)

from mecrl.config import ConfigError
from mecrl.hosts.client import AgentClient, AgentError
from mecrl.hosts.config import HostAgentConfig
from mecrl.testbed import Testbed
from mecrl.testbed.containerd import IMAGE_REF


@pytest.fixture
def netns(containers: Testbed) -> str:
    return containers.hosts["a1"].netns


def host_agent(
    workdir: Path,
    containers: Testbed,
    host: str,
    *,
    netns: bool = True,
    **options: Any,
) -> RunningAgent:
    where = containers.hosts[host]
    return start_agent(
        workdir,
        containers.containerd_socket or "",
        where.containerd_namespace,
        where.netns_path if netns else None,
        **options,
    )


@pytest.fixture
def agent(workdir: Path, containers: Testbed) -> Iterator[RunningAgent]:
    running = host_agent(workdir, containers, "a1", can_checkpoint=criu_works())
    try:
        yield running
    finally:
        remove_all(running)
        running.stop()


@pytest.fixture
def imported(agent: RunningAgent, containers: Testbed) -> RunningAgent:
    tar = containers.image_tar or ""
    agent.client.post("/v1/images/import", {"ref": IMAGE_REF, "tar": tar})
    return agent


def counter(service: str = "counter", **extra: object) -> dict[str, object]:
    return {
        "service": service,
        "image": IMAGE_REF,
        "args": COUNTER_ARGS,
        "port": 7000,
        **extra,
    }


def raw(
    agent: RunningAgent, method: str, path: str, body: bytes | None, **headers: str
):
    parts = urllib.parse.urlsplit(agent.server.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_healthz_needs_no_token_but_the_api_does(agent: RunningAgent) -> None:
    status, body = raw(agent, "GET", "/healthz", None)
    assert (status, body["ok"]) == (200, True)
    status, body = raw(agent, "GET", "/v1/info", None)
    assert status == 401
    assert "missing bearer token" in body["error"]
    wrong = AgentClient(agent.server.url, "not-the-token")
    with pytest.raises(AgentError, match="403: wrong token"):
        wrong.get("/v1/info")
    info = agent.client.get("/v1/info")
    assert info["runtime_handler"] == "io.containerd.runc.v2"
    assert info["runtimes"] == ["runc"]


def test_deploy_health_and_stop_a_busybox_counter(
    imported: RunningAgent, netns: str
) -> None:
    client = imported.client
    created = client.post("/v1/services", counter())
    assert created["status"] == "RUNNING"
    assert client.get("/v1/services/counter?wait_s=10")["healthy"] is True
    imported.client.post("/v1/addresses", {"address": "10.77.3.1"})
    assert talk(netns, "10.77.3.1", 3) == ["1", "2", "3"]

    client.post("/v1/services/counter/stop")
    state = client.get("/v1/services/counter")
    assert (state["status"], state["healthy"]) == (None, False)
    volume = Path(imported.config.state_dir) / "volumes" / "counter" / "count"
    assert volume.read_text().strip() == "3"

    client.delete("/v1/services/counter")
    with pytest.raises(AgentError, match="404: no service 'counter'"):
        client.get("/v1/services/counter")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "POST",
            "/v1/services",
            {"service": "x", "image": IMAGE_REF, "colour": 1},
            400,
            "colour: unknown key; valid keys are: address, args",
        ),
        (
            "POST",
            "/v1/services",
            {"service": "Bad_Id", "image": IMAGE_REF},
            400,
            "service: must be lower-case",
        ),
        (
            "POST",
            "/v1/services",
            {"service": "x", "image": "no/such:image"},
            409,
            "image 'no/such:image' is not on",
        ),
        (
            "POST",
            "/v1/services",
            {
                "service": "x",
                "image": IMAGE_REF,
                "runtime": "kata",
                "isolation": "sandboxed",
            },
            409,
            "needs kata \\(sandboxed\\); host .* runs io.containerd.runc.v2 only",
        ),
        (
            "POST",
            "/v1/services",
            {"service": "x", "image": IMAGE_REF, "isolation": "sandboxed"},
            400,
            "a sandboxed service must run in kata",
        ),
        ("GET", "/v1/nowhere", None, 404, "no such endpoint: /v1/nowhere"),
        ("DELETE", "/v1/info", None, 405, "DELETE not allowed on /v1/info; use GET"),
        (
            "POST",
            "/v1/services/x/start",
            {"mode": "cold"},
            409,
            "no received state for 'x'",
        ),
        (
            "POST",
            "/v1/services/x/start",
            {"mode": "warm"},
            400,
            "mode must be one of cold, live; got 'warm'",
        ),
        (
            "POST",
            "/v1/addresses",
            {"address": "10.1.2"},
            400,
            "expected an IPv4 address, got '10.1.2'",
        ),
        (
            "POST",
            "/v1/addresses",
            {"addr": "10.1.2.3"},
            400,
            "unknown field 'addr'; valid: address",
        ),
        (
            "POST",
            "/v1/rtt",
            {"targets": ["10.0.0.1"]},
            400,
            "targets: expected ADDR:PORT",
        ),
        (
            "POST",
            "/v1/rtt",
            {"targets": ["10.0.0.1:1"], "count": 0},
            400,
            "'count' must be an integer in \\[1, 50\\]",
        ),
        ("GET", "/v1/services/x?wait_s=soon", None, 400, "wait_s must be a number"),
        ("GET", "/v1/images", None, 400, "missing query parameter 'ref'"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(
    imported: RunningAgent,
    method: str,
    path: str,
    body: dict[str, object] | None,
    status: int,
    message: str,
) -> None:
    if path.startswith("/v1/services/x?"):
        imported.client.post("/v1/services", counter("x"))
    with pytest.raises(AgentError, match=f"{status}: .*{message}") as caught:
        imported.client.request(method, path, body)
    assert caught.value.status == status


def test_a_body_that_is_not_json_is_refused(agent: RunningAgent) -> None:
    status, body = raw(
        agent,
        "POST",
        "/v1/drops",
        b"{not json",
        Authorization=f"Bearer {TOKEN}",
        **{"Content-Length": "9"},
    )
    assert status == 400
    assert "body is not JSON" in body["error"]


def test_an_agent_without_a_namespace_changes_no_network(
    workdir: Path, containers: Testbed
) -> None:
    running = host_agent(workdir, containers, "a2", netns=False)
    try:
        with pytest.raises(AgentError, match=r"409: .*no network namespace configured"):
            running.client.post("/v1/addresses", {"address": "10.77.9.9"})
        with pytest.raises(AgentError, match=r"409: .*no network namespace"):
            running.client.post(
                "/v1/routes", {"address": "10.77.9.9", "toward": "10.0.0.1"}
            )
    finally:
        running.stop()


def test_a_host_without_criu_refuses_to_checkpoint(
    workdir: Path, containers: Testbed
) -> None:
    running = host_agent(workdir, containers, "a2", can_checkpoint=False)
    try:
        running.client.post(
            "/v1/images/import", {"ref": IMAGE_REF, "tar": containers.image_tar or ""}
        )
        running.client.post("/v1/services", counter())
        with pytest.raises(AgentError, match=r"409: .*cannot checkpoint"):
            running.client.post("/v1/services/counter/checkpoint")
    finally:
        remove_all(running)
        running.stop()


def test_rtt_measures_a_listening_port(agent: RunningAgent, netns: str) -> None:
    agent.client.post("/v1/addresses", {"address": "10.77.3.2"})
    answer = agent.client.post("/v1/rtt", {"targets": ["10.77.3.2:9"], "count": 2})
    # nothing listens on port 9: a refused connect measures nothing
    assert answer["rtt_ms"] == {"10.77.3.2:9": None}


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    base = (
        "name: h1\nlisten: 127.0.0.1:7700\ntoken_file: t\n"
        "containerd_socket: s\ncontainerd_namespace: n\nstate_dir: d\n"
    )
    path.write_text(base + "colour: blue\n")
    with pytest.raises(ConfigError, match="colour: unknown key; valid keys are"):
        HostAgentConfig.from_file(path)
    path.write_text(
        base + "runtime_handler: io.containerd.kata.v2\ncan_checkpoint: true\n"
    )
    with pytest.raises(ConfigError, match=r"only io\.containerd\.runc\.v2 can"):
        HostAgentConfig.from_file(path)
    path.write_text(base.replace("127.0.0.1:7700", "localhost"))
    with pytest.raises(ConfigError, match="listen: expected ADDR:PORT"):
        HostAgentConfig.from_file(path)
    path.write_text(base + "runtime_handler: io.containerd.kata.v2\n")
    assert HostAgentConfig.from_file(path).runtimes == ("runc", "kata")


def test_tls_serves_https_to_a_client_that_trusts_the_certificate(
    workdir: Path, containers: Testbed, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=agent",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    running = host_agent(workdir, containers, "a2", tls=(str(cert), str(key)))
    try:
        assert running.server.url.startswith("https://127.0.0.1:")
        assert running.client.get("/v1/info")["name"] == running.config.name
        untrusting = AgentClient(running.server.url, TOKEN)
        with pytest.raises(
            AgentError, match=r"unreachable: .*CERTIFICATE_VERIFY_FAILED"
        ):
            untrusting.get("/v1/info")
        plain = AgentClient(running.server.url.replace("https", "http"), TOKEN)
        with pytest.raises(AgentError):
            plain.get("/v1/info")
    finally:
        running.stop()
