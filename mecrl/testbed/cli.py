"""``mecrl testbed up/down/rtt/move-user``: a testbed on this machine."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from mecrl.testbed.spec import USER, TestbedSpec


def add_parsers(commands: Any) -> None:
    """Add ``mecrl testbed`` and its actions to the sub-command parsers."""
    testbed = commands.add_parser(
        "testbed", help="edge hosts and a user as namespaces on this machine"
    )
    actions = testbed.add_subparsers(required=True, metavar="ACTION")

    up = actions.add_parser("up", help="build a testbed and leave it running")
    source = up.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="testbed spec (YAML or TOML)")
    source.add_argument("--scenario", help="cut the testbed out of this scenario")
    up.add_argument(
        "--hosts", type=int, default=3, help="hosts taken from --scenario (3)"
    )
    up.add_argument("--no-agents", action="store_true", help="start no host agents")
    up.add_argument(
        "--no-containerd",
        action="store_true",
        help="network only: no containerd, image or agents",
    )
    up.add_argument(
        "--delay-by",
        choices=("auto", "netem", "forwarder"),
        default="auto",
        help="how link delay is made (auto: netem if the kernel has it)",
    )
    _add_workdir(up)
    up.set_defaults(run=_up)

    down = actions.add_parser("down", help="tear a testbed down")
    _add_workdir(down)
    down.set_defaults(run=_down)

    rtt = actions.add_parser("rtt", help="measured against configured RTTs")
    rtt.add_argument("--count", type=int, default=20, help="pings per pair (20)")
    _add_workdir(rtt)
    rtt.set_defaults(run=_rtt)

    move = actions.add_parser("move-user", help="attach the user to another host")
    move.add_argument("host", help="the new access host")
    _add_workdir(move)
    move.set_defaults(run=_move_user)


def _add_workdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", type=Path, required=True, help="the testbed's working directory"
    )


def _spec(args: argparse.Namespace) -> TestbedSpec:
    if args.spec is not None:
        return TestbedSpec.from_file(args.spec)
    from mecrl.scenario import load_scenario

    return TestbedSpec.from_scenario(load_scenario(args.scenario), args.hosts)


def _up(args: argparse.Namespace) -> int:
    from mecrl.testbed.testbed import Testbed

    spec = _spec(args)
    containerd = not args.no_containerd
    testbed = Testbed.up(
        spec,
        args.workdir,
        containerd=containerd,
        agents=containerd and not args.no_agents,
        delay_by=args.delay_by,
    )
    print(f"testbed up in {testbed.workdir} (link delay by {testbed.delay_by})")
    print(f"{'host':8} {'address':11} {'runtime':7} {'ckpt':5} {'zone':9} agent")
    for host in (*testbed.hosts.values(), testbed.user):
        checkpoint = "yes" if host.can_checkpoint else "no"
        agent = host.agent_url or "-"
        runtime = host.runtime if host.name != USER else "-"
        print(
            f"{host.name:8} {host.address:11} {runtime:7} {checkpoint:5} "
            f"{host.zone or '-':9} {agent}"
        )
    print(f"user attached to {testbed.access_host}; token in {testbed.token_file}")
    if testbed.containerd_socket:
        print(f"containerd: {testbed.containerd_socket}; image {testbed.image_tar}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from mecrl.testbed.testbed import teardown

    if teardown(args.workdir):
        print(f"testbed in {args.workdir} torn down")
    else:
        print(f"no testbed in {args.workdir}")
    return 0


def _rtt(args: argparse.Namespace) -> int:
    from mecrl.testbed.testbed import Testbed

    testbed = Testbed.attach(args.workdir)
    names = [USER, *testbed.hosts]
    print(f"{'from':8} {'to':8} {'configured':>11} {'measured':>9} {'error':>7}")
    worst = 0.0
    for src, dst in itertools.combinations(names, 2):
        configured = testbed.configured_rtt_ms(src, dst)
        measured = testbed.measure_rtt_ms(src, dst, args.count)
        error = (measured - configured) / configured if configured else 0.0
        worst = max(worst, abs(error))
        print(f"{src:8} {dst:8} {configured:9.2f}ms {measured:7.2f}ms {error:+7.1%}")
    print(f"largest error {worst:.1%} (user attached to {testbed.access_host})")
    return 0


def _move_user(args: argparse.Namespace) -> int:
    from mecrl.testbed.testbed import Testbed

    testbed = Testbed.attach(args.workdir)
    testbed.move_user(args.host)
    print(f"user attached to {args.host}")
    return 0
