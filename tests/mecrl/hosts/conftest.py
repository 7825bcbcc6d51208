"""A testbed's containerd, namespaces and image for the host agent tests.

The testbed (``mecrl.testbed``) is brought up without its own agents; the
tests run agents of their own on its containerd and in its namespaces, and
the testbed's teardown removes everything, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import missing_tools

from mecrl.config import from_dict
from mecrl.testbed import Testbed, TestbedSpec

SPEC = {
    "hosts": [{"name": "a1"}, {"name": "a2"}],
    "links": [{"hosts": ["a1", "a2"], "delay_ms": 1.0, "bandwidth_mbps": 100}],
    "user": {"access_host": "a1"},
}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hosts")


@pytest.fixture(scope="session")
def containers(workdir: Path) -> Iterator[Testbed]:
    """Two host namespaces and a containerd with the busybox image, no agents."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    spec = from_dict(TestbedSpec, SPEC)
    with Testbed.up(spec, workdir / "testbed", agents=False) as testbed:
        yield testbed
