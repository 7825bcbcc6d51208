"""The README's Python examples run as written."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run_and_give_what_they_say() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show how to use the environments"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)

    mask = namespace["mask"]
    assert isinstance(mask, np.ndarray)
    assert mask[0]
    info = namespace["info"]
    assert isinstance(info, dict)
    assert "access_latency" in info["terms"]
    fleet = namespace["fleet"]
    assert fleet.num_envs == 10_000  # type: ignore[attr-defined]
    assert fleet.unwrapped.core.scenario.config.name == "hex-2d"  # type: ignore[attr-defined]
