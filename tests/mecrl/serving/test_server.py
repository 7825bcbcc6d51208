"""The HTTP server, started as a real process on a loopback port."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mecrl.backend import SimBackend
from mecrl.evaluate import episode_key
from mecrl.serving import TOKEN_ENV
from mecrl.serving.bundle import Bundle, load_bundle
from mecrl.serving.cli import read_token
from mecrl.serving.orchestrate import as_columns, report
from mecrl.serving.process import ServerProcess
from mecrl.train import RunDirectory

Request = dict[str, Any]


@pytest.fixture(scope="module")
def dqn(bundles: dict[str, Path]) -> Bundle:
    return load_bundle(bundles["dqn"])


@pytest.fixture
def client(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers=server.headers) as session:
        yield session


def episode(bundle: Bundle, n_services: int, seed: int = 2) -> SimBackend:
    backend = SimBackend(bundle.scenario, coupled=True)
    backend.reset(episode_key(seed), np.arange(n_services))
    return backend


@pytest.fixture
def valid(dqn: Bundle) -> Request:
    backend = episode(dqn, 6)
    return report(backend, [f"svc-{n}" for n in range(6)])


def test_decisions_equal_the_trained_policy_in_process(
    client: httpx.Client, dqn: Bundle, runs: dict[str, Path]
) -> None:
    policy = RunDirectory(runs["dqn"]).load_policy(dqn.scenario)
    backend = episode(dqn, 120)
    ids = [f"svc-{n}" for n in range(120)]
    kinds: set[str] = set()
    for _ in range(10):
        response = client.post("/v1/decisions", json=report(backend, ids))
        assert response.status_code == 200, response.text
        answer = response.json()["decisions"]
        current = backend.site.copy()

        sites, mask, observation = dqn.view.view(backend)
        action = policy.act(observation, mask)
        backend.step(sites[np.arange(120), action])

        served = np.array([d["site"] for d in answer])
        np.testing.assert_array_equal(served, backend.site)
        assert [d["id"] for d in answer] == ids
        for d, here in zip(answer, current.tolist(), strict=True):
            assert (d["decision"] == "move") == (d["site"] != here)
            kinds.add(d["decision"])
    assert kinds == {"stay", "move", "refused"}


def test_decisions_need_the_token(server: ServerProcess, valid: Request) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "token"}):
        response = httpx.post(f"{server.url}/v1/decisions", json=valid, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    for path in ("/metrics", "/v1/bundle", "/v2"):
        assert httpx.get(f"{server.url}{path}").status_code == 401
    ok = httpx.post(f"{server.url}/v1/decisions", json=valid, headers=server.headers)
    assert ok.status_code == 200


def test_health_needs_no_token(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}


def test_server_binds_loopback_by_default(server: ServerProcess) -> None:
    assert server.process is not None
    assert server.process.stdout is not None
    line = server.process.stdout.readline().decode()
    assert f"on http://127.0.0.1:{server.port}" in line


def _edit(request: Request, path: tuple[Any, ...], value: Any) -> Request:
    changed = copy.deepcopy(request)
    target = changed
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


_DELETE = object()


def _site_where_class_may_not_run(bundle: Bundle, request: Request) -> int:
    names = bundle.scenario.classes.names
    cls = names.index(request["services"][0]["service_class"])
    return int(np.flatnonzero(~bundle.scenario.constraints.static[cls])[0])


MALFORMED = {
    "unknown current site": (
        ("services", 0, "current_site"),
        999,
        ["services", 0, "current_site"],
        "unknown site 999",
    ),
    "access at the cloud": (
        ("services", 0, "access_site"),
        61,
        ["services", 0, "access_site"],
        "access (edge) sites",
    ),
    "site as text": (
        ("services", 0, "current_site"),
        "3",
        ["services", 0, "current_site"],
        "valid integer",
    ),
    "negative load": (
        ("sites", 0, "cpu_cores_used"),
        -1.0,
        ["sites", 0, "cpu_cores_used"],
        "greater than or equal to 0",
    ),
    "missing tenant": (
        ("services", 0, "tenant"),
        _DELETE,
        ["services", 0, "tenant"],
        "Field required",
    ),
    "unknown field": (
        ("services", 0, "colour"),
        "red",
        ["services", 0, "colour"],
        "Extra inputs are not permitted",
    ),
    "unknown class": (
        ("services", 0, "service_class"),
        "web",
        ["services", 0, "service_class"],
        "unknown class 'web'",
    ),
    "figures of no class": (
        ("services", 0, "slo_ms"),
        12345.0,
        ["services", 0, "slo_ms"],
        "is not class",
    ),
    "unknown site report": (
        ("sites", 0, "id"),
        500,
        ["sites", 0, "id"],
        "unknown site 500",
    ),
    "wrong zone": (
        ("sites", 0, "zone"),
        "nowhere",
        ["sites", 0, "zone"],
        "lies in zone",
    ),
    "slot past the episode": (("slot",), 30, ["slot"], "episode length"),
    "no services": (("services",), [], ["services"], "at least 1 item"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_requests_get_422_naming_the_field(
    case: str, client: httpx.Client, valid: Request
) -> None:
    path, value, loc, message = MALFORMED[case]

    response = client.post("/v1/decisions", json=_edit(valid, path, value))

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(
        entry["loc"] == ["body", *loc] and message in entry["msg"] for entry in detail
    ), detail


def _inconsistent(
    bundle: Bundle, request: Request
) -> dict[str, tuple[Request, list[Any], str]]:
    s = bundle.scenario
    busy = request["services"][0]["current_site"]
    busy_entry = next(
        j for j, site in enumerate(request["sites"]) if site["id"] == busy
    )
    offered = sorted(
        name
        for name, on in zip(
            ("runc", "kata"), s.sites.runtimes[busy].tolist(), strict=True
        )
        if on
    )
    wrong_runtimes = ["runc"] if offered != ["runc"] else ["kata", "runc"]
    duplicated = copy.deepcopy(request)
    duplicated["services"][1]["id"] = duplicated["services"][0]["id"]
    misclassed = copy.deepcopy(request)
    first = misclassed["services"][0]
    first["runtime"] = "kata" if first["runtime"] == "runc" else "runc"
    return {
        "service where its class may not run": (
            _edit(
                request,
                ("services", 0, "current_site"),
                _site_where_class_may_not_run(bundle, request),
            ),
            ["services", 0, "current_site"],
            "may not run at site",
        ),
        "load below the services there": (
            _edit(request, ("sites", busy_entry, "cpu_cores_used"), 0.0),
            ["sites", busy_entry, "cpu_cores_used"],
            "is less than",
        ),
        "runtimes the site does not offer": (
            _edit(request, ("sites", busy_entry, "runtimes"), wrong_runtimes),
            ["sites", busy_entry, "runtimes"],
            "offers",
        ),
        "repeated service id": (duplicated, ["services", 1, "id"], "repeats"),
        "runtime of another class": (
            misclassed,
            ["services", 0, "runtime"],
            "is not class",
        ),
    }


INCONSISTENT = [
    "service where its class may not run",
    "load below the services there",
    "runtimes the site does not offer",
    "repeated service id",
    "runtime of another class",
]


@pytest.mark.parametrize("case", INCONSISTENT)
def test_inconsistent_requests_get_422_naming_the_field(
    case: str, client: httpx.Client, valid: Request, dqn: Bundle
) -> None:
    request, loc, message = _inconsistent(dqn, valid)[case]

    response = client.post("/v1/decisions", json=request)

    assert response.status_code == 422, response.text
    [entry] = response.json()["detail"]
    assert entry["loc"] == ["body", *loc]
    assert message in entry["msg"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_get_422(
    literal: str, client: httpx.Client, valid: Request
) -> None:
    text = json.dumps(_edit(valid, ("sites", 0, "cpu_cores_used"), 123456.5))
    body = text.replace("123456.5", literal)

    response = client.post(
        "/v1/decisions", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422, response.text
    [entry] = response.json()["detail"]
    assert entry["loc"] == ["body", "sites", 0, "cpu_cores_used"]
    assert "finite number" in entry["msg"]


@pytest.mark.parametrize("body", [b"{", b"[]", b"", b"\xff\xfe"])
def test_bodies_that_are_no_request_get_422(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/v1/decisions", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_a_batch_over_the_limit_gets_422(client: httpx.Client, dqn: Bundle) -> None:
    # the shared server runs with --max-batch 500; city-grid holds 501 services
    backend = episode(dqn, 501)
    request = report(backend, [f"svc-{n}" for n in range(501)])

    response = client.post("/v1/decisions", json=request)

    assert response.status_code == 422
    [entry] = response.json()["detail"]
    assert entry["loc"] == ["body", "services"]
    assert "limit of 500" in entry["msg"]


def test_a_body_over_the_size_limit_gets_413(client: httpx.Client) -> None:
    body = b'{"services": [' + b" " * (16 * 2**20) + b"]}"

    response = client.post(
        "/v1/decisions", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert "limit of 16777216 bytes" in response.json()["detail"]


def test_an_inference_body_over_the_size_limit_gets_413_in_protocol_words(
    client: httpx.Client, dqn: Bundle
) -> None:
    body = b'{"inputs": [' + b" " * (16 * 2**20) + b"]}"

    response = client.post(
        f"/v2/models/{dqn.name}/infer",
        content=body,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert "limit of 16777216 bytes" in response.json()["error"]


def test_decisions_answer_only_post(client: httpx.Client) -> None:
    for path in ("/v1/decisions", "/v1/decisions/columns"):
        response = client.get(path)

        assert response.status_code == 405
        assert response.headers["allow"] == "POST"


def test_a_chunked_body_over_the_size_limit_gets_413(client: httpx.Client) -> None:
    def chunks() -> Any:
        for _ in range(17):
            yield b" " * 2**20

    response = client.post(
        "/v1/decisions", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413


def test_metrics_count_requests_latency_and_decisions(
    client: httpx.Client, valid: Request
) -> None:
    assert client.post("/v1/decisions", json=valid).status_code == 200
    assert client.post("/v1/decisions", json={}).status_code == 422

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'mecrl_requests_total{route="/v1/decisions",status="200"}' in text
    assert 'mecrl_requests_total{route="/v1/decisions",status="422"}' in text
    assert 'mecrl_request_seconds_bucket{le="0.001",route="/v1/decisions"}' in text
    for kind in ("stay", "move", "refused"):
        assert f'mecrl_decisions_total{{kind="{kind}"}}' in text
    stays = [
        line
        for line in text.splitlines()
        if line.startswith('mecrl_decisions_total{kind="stay"}')
    ]
    assert float(stays[0].split()[-1]) >= 1


def test_the_bundle_manifest_is_served(client: httpx.Client, dqn: Bundle) -> None:
    assert client.get("/v1/bundle").json() == dqn.manifest


def test_openapi_schema_documents_the_decision_request(server: ServerProcess) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()

    body = schema["paths"]["/v1/decisions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DecisionRequest"
    }
    assert "ServiceReport" in schema["components"]["schemas"]
    assert "/v2/models/{name}/infer" in schema["paths"]


def _tensors(bundle: Bundle, n: int) -> tuple[np.ndarray, np.ndarray]:
    _sites, mask, observation = bundle.view.view(episode(bundle, n))
    return observation, mask


def _infer_body(observation: np.ndarray, mask: np.ndarray) -> Request:
    return {
        "id": "req-1",
        "inputs": [
            {
                "name": "observation",
                "shape": list(observation.shape),
                "datatype": "FP32",
                "data": observation.ravel().tolist(),
            },
            {
                "name": "mask",
                "shape": list(mask.shape),
                "datatype": "BOOL",
                "data": mask.ravel().tolist(),
            },
        ],
    }


def test_inference_protocol_metadata(client: httpx.Client, dqn: Bundle) -> None:
    assert client.get("/v2").json()["name"] == "mecrl"
    metadata = client.get(f"/v2/models/{dqn.name}").json()
    assert metadata["name"] == dqn.name
    assert metadata["inputs"] == [
        {"name": "observation", "datatype": "FP32", "shape": [-1, 73]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, 8]},
    ]
    assert client.get(f"/v2/models/{dqn.name}/ready").json()["ready"] is True
    unknown = client.get("/v2/models/other")
    assert unknown.status_code == 404
    assert "unknown model 'other'" in unknown.json()["error"]


def test_inference_protocol_infer_runs_the_raw_model(
    client: httpx.Client, dqn: Bundle
) -> None:
    observation, mask = _tensors(dqn, 40)

    response = client.post(
        f"/v2/models/{dqn.name}/infer", json=_infer_body(observation, mask)
    )

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == dqn.name
    assert answer["id"] == "req-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    action, proposed = dqn.act(observation, mask)
    assert outputs["action"]["datatype"] == "INT64"
    assert outputs["action"]["shape"] == [40]
    assert outputs["action"]["data"] == action.tolist()
    assert outputs["proposed"]["data"] == proposed.tolist()


def _bad_infer(dqn: Bundle) -> dict[str, tuple[Request, str]]:
    observation, mask = _tensors(dqn, 3)
    good = _infer_body(observation, mask)
    no_stay = mask.copy()
    no_stay[1, :] = False
    wrong_type = copy.deepcopy(good)
    wrong_type["inputs"][1]["datatype"] = "FP32"
    wrong_type["inputs"][1]["data"] = [1.0] * mask.size
    short = copy.deepcopy(good)
    short["inputs"][0]["data"] = short["inputs"][0]["data"][:-1]
    wrong_shape = copy.deepcopy(good)
    wrong_shape["inputs"][0]["shape"] = [3, 72]
    nan = copy.deepcopy(good)
    nan["inputs"][0]["data"][0] = 1e39  # finite in JSON, not in float32
    unknown_output = {**good, "outputs": [{"name": "logits"}]}
    missing = {**good, "inputs": good["inputs"][:1]}
    return {
        "mask forbids staying": (
            _infer_body(observation, no_stay),
            "row 1: the mask must allow staying",
        ),
        "mask as numbers": (wrong_type, "datatype must be BOOL"),
        "data shorter than shape": (short, "needs 219 values, got 218"),
        "wrong width": (wrong_shape, "shape must be [N, 73]"),
        "overflows float32": (nan, "finite in float32"),
        "unknown output": (unknown_output, "unknown output 'logits'"),
        "missing mask": (missing, "exactly observation and mask"),
    }


BAD_INFER = [
    "mask forbids staying",
    "mask as numbers",
    "data shorter than shape",
    "wrong width",
    "overflows float32",
    "unknown output",
    "missing mask",
]


@pytest.mark.parametrize("case", BAD_INFER)
def test_bad_inference_requests_get_400_with_the_reason(
    case: str, client: httpx.Client, dqn: Bundle
) -> None:
    body, message = _bad_infer(dqn)[case]

    response = client.post(f"/v2/models/{dqn.name}/infer", json=body)

    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_inference_type_errors_get_400_in_the_protocol_format(
    client: httpx.Client, dqn: Bundle
) -> None:
    response = client.post(f"/v2/models/{dqn.name}/infer", json={"inputs": "x"})

    assert response.status_code == 400
    assert "inputs" in response.json()["error"]

    nested = client.post(
        f"/v2/models/{dqn.name}/infer",
        content=b"[" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert nested.status_code == 400
    assert "error parsing the body" in nested.json()["error"]


def test_serve_refuses_to_start_without_a_token(bundles: dict[str, Path]) -> None:
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}

    result = subprocess.run(
        [sys.executable, "-m", "mecrl.cli", "serve", str(bundles["dqn"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2
    assert "no bearer token" in result.stderr
    assert "--no-auth" in result.stderr


def test_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token(None) is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert read_token(None) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token(tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        read_token(tmp_path / "missing")


def test_a_server_without_auth_answers_without_a_token(
    bundles: dict[str, Path], dqn: Bundle
) -> None:
    backend = episode(dqn, 3)
    with ServerProcess(bundles["dqn"], None) as open_server:
        response = httpx.post(
            f"{open_server.url}/v1/decisions", json=report(backend, ["a", "b", "c"])
        )
    assert response.status_code == 200
    assert len(response.json()["decisions"]) == 3


def test_columns_get_the_decisions_of_objects(
    client: httpx.Client, dqn: Bundle
) -> None:
    backend = episode(dqn, 300, seed=7)
    request = report(backend, [f"svc-{n}" for n in range(300)])

    by_objects = client.post("/v1/decisions", json=request)
    by_columns = client.post("/v1/decisions/columns", json=as_columns(request))

    assert by_objects.status_code == by_columns.status_code == 200, by_columns.text
    rows = by_objects.json()["decisions"]
    columns = by_columns.json()["decisions"]
    for field in ("id", "decision", "site", "proposed_site"):
        assert columns[field] == [row[field] for row in rows]
    assert {"move", "stay"} <= set(columns["decision"])


@pytest.mark.parametrize(
    ("edit", "loc", "message"),
    [
        (
            lambda body: body["services"]["tenant"].pop(),
            ["body", "services", "tenant"],
            "has 5 entries, but id has 6: one per service",
        ),
        (
            lambda body: body["sites"]["memory_mb_used"].pop(),
            ["body", "sites", "memory_mb_used"],
            "entries, but id has",
        ),
        (
            lambda body: body["services"]["current_site"].__setitem__(4, 999),
            ["body", "services", "current_site", 4],
            "unknown site 999",
        ),
        (
            lambda body: body["services"]["id"].__setitem__(5, "svc-0"),
            ["body", "services", "id", 5],
            "id 'svc-0' repeats (also entry 0)",
        ),
        (
            lambda body: body["services"]["service_class"].__setitem__(2, "nope"),
            ["body", "services", "service_class", 2],
            "unknown class 'nope'",
        ),
    ],
)
def test_bad_columns_get_422_naming_the_field(
    client: httpx.Client,
    valid: Request,
    edit: Any,
    loc: list[Any],
    message: str,
) -> None:
    body = as_columns(valid)
    edit(body)

    response = client.post("/v1/decisions/columns", json=body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    assert message in detail["msg"]
