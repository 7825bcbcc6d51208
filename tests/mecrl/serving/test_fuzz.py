"""Requests generated from the served OpenAPI schema never get a 5xx.

The operations are fuzzed one by one with schemathesis' strategies rather
than its pytest plugin, whose fixture loader does not run on pytest 9.
"""

import itertools
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.generation.modes import GenerationMode

from mecrl.serving.process import ServerProcess


def fuzz(
    operation: Any,
    mode: GenerationMode,
    server: ServerProcess,
    model: str,
    statuses: set[int],
) -> None:
    """Send generated requests of ``operation``; fail on any 5xx."""
    # the served model's name reaches past the 404 of an unknown model
    known = {"name": model} if "{name}" in operation.path else None

    @hypothesis.settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(mode, path_parameters=known))
    def call(case: schemathesis.Case) -> None:
        response = case.call(headers=server.headers, timeout=30)
        statuses.add(response.status_code)
        assert response.status_code < 500, (
            operation.label,
            response.status_code,
            response.text,
        )

    try:
        call()
    except hypothesis.errors.Unsatisfiable:
        # an operation without parameters or body has no invalid input
        assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.mark.slow
def test_no_request_gets_a_server_error(server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/decisions",
        "/v1/decisions/columns",
        "/v2/models/{name}/infer",
    }
    model = httpx.get(f"{server.url}/v1/bundle", headers=server.headers).json()["run"]
    statuses: set[int] = set()

    for operation, mode in itertools.product(operations, GenerationMode):
        fuzz(operation, mode, server, model, statuses)

    # answers, refusals of bad tensors, and field errors all came up
    assert {200, 400, 422} <= statuses
