"""The ``export``, ``serve``, ``orchestrate`` and ``bench-serve`` commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from mecrl.serving import TOKEN_ENV

DEFAULT_PORT = 8000


def add_parsers(commands: Any) -> None:
    """Add the export and serving commands to the ``mecrl`` parser."""
    export = commands.add_parser(
        "export", help="write a trained run's policy as an ONNX bundle"
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--out", required=True, type=Path, help="bundle folder")
    export.set_defaults(run=_export)

    serve = commands.add_parser("serve", help="answer decisions over HTTP")
    serve.add_argument("bundle", type=Path, metavar="BUNDLE")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}"
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the bearer token (default: ${TOKEN_ENV})",
    )
    serve.add_argument(
        "--no-auth", action="store_true", help="serve without a bearer token"
    )
    serve.add_argument(
        "--max-batch",
        type=int,
        default=10_000,
        help="most services (or tensor rows) per request (default 10,000)",
    )
    serve.add_argument(
        "--max-body-mb",
        type=float,
        default=16.0,
        help="largest request body in MiB (default 16)",
    )
    serve.set_defaults(run=_serve)

    orchestrate = commands.add_parser(
        "orchestrate",
        help="drive a simulated deployment through a server for one episode",
    )
    orchestrate.add_argument("bundle", type=Path, metavar="BUNDLE")
    orchestrate.add_argument("--url", required=True, help="the server's base URL")
    orchestrate.add_argument(
        "--token-file", type=Path, help=f"bearer token (default: ${TOKEN_ENV})"
    )
    orchestrate.add_argument("--seed", type=int, default=0, help="episode seed")
    orchestrate.add_argument("--services", type=int, default=20)
    orchestrate.add_argument(
        "--run",
        dest="run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="also run the run's policy in process and compare",
    )
    orchestrate.set_defaults(run=_orchestrate)

    bench = commands.add_parser(
        "bench-serve", help="measure decision latency in process and over HTTP"
    )
    bench.add_argument("bundle", type=Path, metavar="BUNDLE")
    bench.add_argument("--quick", action="store_true", help="fewer requests")
    bench.set_defaults(run=_bench)


def _export(args: argparse.Namespace) -> int:
    from mecrl.serving.export import export_run

    manifest = export_run(args.run_dir, args.out)
    print(f"wrote {manifest.parent} (model.onnx, scenario.yaml, {manifest.name})")
    return 0


def read_token(token_file: Path | None) -> str | None:
    """Return the token from ``token_file`` or the environment, if any.

    Raises:
        ValueError: If the file is missing or empty.
    """
    if token_file is not None:
        if not token_file.is_file():
            raise ValueError(f"token file {str(token_file)!r} does not exist")
        token = token_file.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"token file {str(token_file)!r} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mecrl.serving.bundle import load_bundle
    from mecrl.serving.server import (
        ServerSettings,
        create_app,
        freeze_heap,
        log_startup,
    )

    token = read_token(args.token_file)
    if args.no_auth and token is not None:
        raise ValueError("--no-auth and a token contradict each other; drop one")
    if token is None and not args.no_auth:
        raise ValueError(
            f"no bearer token: give --token-file or set ${TOKEN_ENV}, or serve "
            "without one on purpose with --no-auth"
        )
    settings = ServerSettings(
        token=token,
        max_batch=args.max_batch,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )
    bundle = load_bundle(args.bundle)
    app = create_app(bundle, settings)
    freeze_heap()
    log_startup(args.host, args.port, settings)
    print(
        f"serving {bundle.name} ({bundle.algorithm}, scenario "
        f"{bundle.scenario.config.name}) on http://{args.host}:{args.port}",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        # nothing reads the client's address, so forwarded-for headers are
        # not parsed; the server does not advertise itself
        proxy_headers=False,
        server_header=False,
    )
    return 0


def _orchestrate(args: argparse.Namespace) -> int:
    import httpx

    from mecrl.serving.bundle import load_bundle
    from mecrl.serving.orchestrate import run_in_process, run_over_http

    bundle = load_bundle(args.bundle)
    token = read_token(args.token_file)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=60.0) as client:
            served = run_over_http(client, bundle.scenario, args.seed, args.services)
    except httpx.HTTPStatusError as exc:
        raise ValueError(
            f"the server answered {exc.response.status_code}: {exc.response.text}"
        ) from None
    except httpx.TransportError as exc:
        raise ValueError(f"cannot reach the server at {args.url}: {exc}") from None
    print(f"over HTTP:  total cost {served.total:.6f}, {served.moves} moves")
    if args.run_dir is not None:
        from mecrl.train import RunDirectory

        policy = RunDirectory.open(args.run_dir).load_policy(bundle.scenario)
        local = run_in_process(policy, bundle.view, args.seed, args.services)
        print(f"in process: total cost {local.total:.6f}, {local.moves} moves")
        if local.total != served.total:
            print("the totals differ")
            return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mecrl.serving.bench import serving_figures

    for figure in serving_figures(args.bundle, quick=args.quick):
        print(f"{figure.name:<66} {figure.value:>14,.1f} {figure.unit}")
    return 0
