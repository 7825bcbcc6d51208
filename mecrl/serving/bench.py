"""Latency of decisions: in process, over HTTP at a fixed rate, and in batches.

| figure | how |
|---|---|
| in process, one service | :meth:`Decider.decide` on a reported state of one |
| | service (observation, mask, model, admission), p50 and p99 |
| over HTTP at a fixed rate | an open-loop client (on uvloop) sends |
| | one-service decision requests on a fixed schedule to ``mecrl serve`` in |
| | another process on loopback; latency counts from the scheduled send, so |
| | a client that falls behind shows it; p50 and p99, and the p99 of how |
| | late the client itself woke up to send |
| batch of 10,000 | :meth:`Decider.decide` on 10,000 services (median), and |
| | the same batch as one HTTP request, JSON both ways (median) |

States are drawn from a coupled simulator of the bundle's scenario, so
loads, candidates and masks are those of a real episode.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop

from mecrl.backend import SimBackend
from mecrl.bench import Figure
from mecrl.constraints import Occupancy
from mecrl.evaluate import episode_key
from mecrl.scenario import Scenario
from mecrl.serving.bundle import load_bundle
from mecrl.serving.decide import Decider, FleetState
from mecrl.serving.orchestrate import as_columns, report
from mecrl.serving.process import ServerProcess
from mecrl.serving.server import freeze_heap

RATE_PER_S = 1_000.0
"""Request rate of the HTTP figure."""

BATCH = 10_000
"""Services in the batch figure."""

CONNECTIONS = 8
"""Connections of the open-loop client."""


def serving_figures(bundle_path: str | Path, quick: bool = False) -> Iterator[Figure]:
    """Yield the serving figures of the bundle at ``bundle_path``.

    The first figure is the machine's load average: on a shared machine the
    latencies follow whatever else runs.
    """
    yield Figure(
        "load average over the last minute, at the start", os.getloadavg()[0], ""
    )
    bundle = load_bundle(bundle_path)
    decider = Decider(bundle)
    one = _backend(bundle.scenario, 1)
    state = _state(one)
    freeze_heap()  # as mecrl serve does
    repeats = 300 if quick else 5_000
    p50, p99 = _percentiles_us(_time_calls(lambda: decider.decide(state), repeats))
    yield Figure("in process, one service: decision latency p50", p50, "us")
    yield Figure("in process, one service: decision latency p99", p99, "us")
    # CPU time leaves out the waits for a core that a busy machine adds
    cpu = _time_calls(lambda: decider.decide(state), repeats, time.thread_time)
    p50, p99 = _percentiles_us(cpu)
    yield Figure("in process, one service: decision CPU time p50", p50, "us")
    yield Figure("in process, one service: decision CPU time p99", p99, "us")

    batch = _state(_backend(bundle.scenario, BATCH))
    repeats = 3 if quick else 11
    times = _time_calls(lambda: decider.decide(batch), repeats)
    yield Figure(
        f"in process, batch of {BATCH:,}: decision time",
        statistics.median(times) * 1e3,
        "ms",
    )

    token = secrets.token_urlsafe(24)
    with ServerProcess(bundle_path, token) as server:
        body = report(one, ["service-0"])
        duration_s = 1.0 if quick else 5.0
        # uvloop's timers keep to the schedule within tens of microseconds;
        # asyncio's own loop wakes up to a millisecond late (epoll's unit)
        latencies = uvloop.run(
            _open_loop(server.port, server.headers, body, duration_s)
        )
        p50, p99 = _percentiles_us([latency for latency, _ in latencies])
        yield Figure(
            f"HTTP at {RATE_PER_S:,.0f} requests/s: latency p50", p50 / 1e3, "ms"
        )
        yield Figure(
            f"HTTP at {RATE_PER_S:,.0f} requests/s: latency p99", p99 / 1e3, "ms"
        )
        # part of the latency: how late the client itself sent, on a busy machine
        _, late_p99 = _percentiles_us([late for _, late in latencies])
        yield Figure(
            f"HTTP at {RATE_PER_S:,.0f} requests/s: the client's own lateness p99",
            late_p99 / 1e3,
            "ms",
        )
        big = report(
            _backend(bundle.scenario, BATCH), [f"service-{n}" for n in range(BATCH)]
        )
        # bodies are encoded once: the figure is the server's, not the client's
        for label, path, body in (
            ("one object per service", "/v1/decisions", big),
            ("as columns", "/v1/decisions/columns", as_columns(big)),
        ):
            times = _time_posts(server, path, json.dumps(body).encode(), repeats)
            yield Figure(
                f"HTTP, batch of {BATCH:,} {label}: request time",
                statistics.median(times) * 1e3,
                "ms",
            )


def _time_posts(
    server: ServerProcess, path: str, data: bytes, repeats: int
) -> list[float]:
    """Time ``repeats`` requests posting ``data`` to ``path``."""
    headers = {**server.headers, "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:

        def post() -> None:
            client.post(path, content=data).raise_for_status()

        return _time_calls(post, repeats)


def _backend(scenario: Scenario, n_services: int) -> SimBackend:
    """Return an episode's first slot, services sharing the sites.

    Each service starts at its nearest feasible site, as if alone, so that
    more services than the sites can hold still make a state: the crowded
    sites then admit no one.
    """
    backend = SimBackend(scenario, coupled=False)
    backend.reset(episode_key(0), np.arange(n_services))
    occupancy = Occupancy(scenario.constraints, len(scenario.classes.tenant_names))
    occupancy.add(backend.cls, backend.tenant, backend.site)
    backend.occupancy = occupancy
    return backend


def _state(backend: SimBackend) -> FleetState:
    occupancy = backend.occupancy
    assert occupancy is not None  # _backend makes coupled backends
    return FleetState(
        backend.cls,
        backend.tenant,
        backend.site,
        backend.access,
        backend.slot,
        occupancy.cpu_used.copy(),
        occupancy.memory_used.copy(),
        len(backend.scenario.classes.tenant_names),
        None if backend.history is None else backend.history.window(),
    )


def _time_calls(
    call: Callable[[], object],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    call()  # warm caches and tables
    times = []
    for _ in range(repeats):
        start = clock()
        call()
        times.append(clock() - start)
    return times


def _percentiles_us(times_s: list[float]) -> tuple[float, float]:
    values = np.asarray(times_s) * 1e6
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


class _Connection:
    """One keep-alive HTTP/1.1 connection that posts a fixed request.

    A client of a few lines, so that the client's own cost stays small
    beside the server's at a thousand requests a second on two cores.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, request: bytes) -> None:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"the server answered {status.decode()}")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _raw_request(port: int, headers: dict[str, str], body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    lines = [
        "POST /v1/decisions HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{key}: {value}" for key, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _open_loop(
    port: int, headers: dict[str, str], body: dict[str, Any], duration_s: float
) -> list[tuple[float, float]]:
    """Send ``body`` at :data:`RATE_PER_S` for ``duration_s``.

    Requests go out on schedule whatever the answers' pace (open loop), each
    on a free connection of a pool; a request waits for a free connection
    only if every connection is busy, and that wait counts as latency.

    Returns:
        Per request, its latency from the scheduled send and how late the
        client woke up to send it, in seconds.
    """
    request = _raw_request(port, headers, body)
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    connections = [await _Connection.open(port) for _ in range(CONNECTIONS)]
    for connection in connections:
        for _ in range(20):  # warm the server and the connection
            await connection.post(request)
        pool.put_nowait(connection)
    n = int(duration_s * RATE_PER_S)
    start = time.perf_counter()

    async def one(i: int) -> tuple[float, float]:
        scheduled = start + i / RATE_PER_S
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        # the timer may fire a little early: then the request counts from
        # when it was sent, never from a later time
        woke = time.perf_counter()
        connection = await pool.get()
        try:
            await connection.post(request)
        finally:
            pool.put_nowait(connection)
        return time.perf_counter() - min(scheduled, woke), max(0.0, woke - scheduled)

    # a collection walks every pending request's task and would stall them all
    gc.disable()
    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        gc.enable()
        for connection in connections:
            await connection.close()
