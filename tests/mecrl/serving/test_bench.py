"""The serving benchmark runs and reports every figure."""

import math
from pathlib import Path

import pytest

from mecrl.serving.bench import serving_figures


@pytest.mark.slow
def test_serving_benchmark_reports_every_figure(bundles: dict[str, Path]) -> None:
    figures = list(serving_figures(bundles["maskable_ppo"], quick=True))

    names = [figure.name for figure in figures]
    assert names == [
        "load average over the last minute, at the start",
        "in process, one service: decision latency p50",
        "in process, one service: decision latency p99",
        "in process, one service: decision CPU time p50",
        "in process, one service: decision CPU time p99",
        "in process, batch of 10,000: decision time",
        "HTTP at 1,000 requests/s: latency p50",
        "HTTP at 1,000 requests/s: latency p99",
        "HTTP at 1,000 requests/s: the client's own lateness p99",
        "HTTP, batch of 10,000 one object per service: request time",
        "HTTP, batch of 10,000 as columns: request time",
    ]
    assert all(math.isfinite(f.value) and f.value > 0 for f in figures[1:])
    p50, p99 = figures[1].value, figures[2].value
    assert p50 <= p99
