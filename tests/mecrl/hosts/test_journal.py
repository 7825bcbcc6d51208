"""The migration journal and the hosts file, without hosts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mecrl.config import ConfigError
from mecrl.hosts.backend import HostsConfig
from mecrl.hosts.journal import Journal


def test_the_journal_tells_which_migrations_are_unfinished(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "sub" / "journal.jsonl")
    first, second = journal.new_id("svc"), journal.new_id("svc")
    assert first != second
    journal.append(first, "begin", spec={"service": "svc"}, source="a", target="b")
    journal.append(second, "begin", spec={"service": "svc"}, source="b", target="a")
    journal.append(first, "frozen")
    journal.append(first, "done")
    journal.append(second, "frozen")
    # a crash mid-write leaves a torn last line
    with journal.path.open("a") as stream:
        stream.write('{"migration": "' + second + '", "st')
    unfinished = journal.unfinished()
    assert [m.migration for m in unfinished] == [second]
    assert unfinished[0].steps == ["begin", "frozen"]
    assert unfinished[0].reached("frozen")
    assert not unfinished[0].reached("switched")
    assert unfinished[0].begin["source"] == "b"


def test_every_line_is_on_disk_when_append_returns(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.append("m", "begin", spec={})
    lines = journal.path.read_text().splitlines()
    assert len(lines) == 1
    assert yaml.safe_load(lines[0])["step"] == "begin"


def hosts_file(tmp_path: Path, **changes: object) -> Path:
    data: dict[str, object] = {
        "token_file": "token",
        "journal": "journal.jsonl",
        "service": {"image": "docker.io/mecrl/busybox:latest"},
        "hosts": [
            {
                "name": "h1",
                "agent_url": "http://10.0.0.1:7070",
                "address": "10.0.0.1",
                "site": 0,
            },
            {
                "name": "h2",
                "agent_url": "http://10.0.0.2:7070",
                "address": "10.0.0.2",
                "site": 1,
                "runtime": "kata",
            },
        ],
    }
    data.update(changes)
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_hosts_file_is_checked(tmp_path: Path) -> None:
    config = HostsConfig.from_file(hosts_file(tmp_path))
    assert [h.runtime for h in config.hosts] == ["runc", "kata"]
    with pytest.raises(ConfigError, match="colour: unknown key; valid keys are"):
        HostsConfig.from_file(hosts_file(tmp_path, colour="red"))
    bad = [{"name": "h1", "agent_url": "http://x:1", "address": "10.0.0", "site": 0}]
    with pytest.raises(ConfigError, match=r"expected an IPv4 address, got '10\.0\.0'"):
        HostsConfig.from_file(hosts_file(tmp_path, hosts=bad))
    twice = [
        {"name": n, "agent_url": "http://x:1", "address": "10.0.0.1", "site": 0}
        for n in ("h1", "h2")
    ]
    with pytest.raises(ConfigError, match="two hosts stand for one site"):
        HostsConfig.from_file(hosts_file(tmp_path, hosts=twice))
    with pytest.raises(ConfigError, match="service_subnet"):
        HostsConfig.from_file(hosts_file(tmp_path, service_subnet="10.77.0.0/33"))
