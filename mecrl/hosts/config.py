"""The host agent's configuration: one YAML file per edge host."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from mecrl.config import ConfigError, check, from_dict, load_file

RUNC_HANDLER = "io.containerd.runc.v2"
KATA_HANDLER = "io.containerd.kata.v2"
RUNTIME_HANDLERS: dict[str, str] = {RUNC_HANDLER: "runc", KATA_HANDLER: "kata"}
"""containerd runtime handlers the agent drives, and mecrl's runtime names."""


@dataclass(frozen=True)
class HostAgentConfig:
    """How one host agent listens, authenticates and reaches containerd."""

    name: str
    """Host name, as the topology file names it."""
    listen: str
    """``ADDR:PORT`` to serve on (port 0 picks a free port)."""
    token_file: str
    """File holding the bearer token every request must carry."""
    containerd_socket: str
    """containerd's gRPC socket."""
    containerd_namespace: str
    """containerd namespace of this host's images and containers."""
    state_dir: str
    """Where volumes, checkpoints and received state are kept."""
    netns_path: str | None = None
    """Network namespace the containers join and where addresses and routes
    are set; None leaves containers in containerd's own namespace and
    refuses address and route requests."""
    runtime_handler: str = RUNC_HANDLER
    """containerd runtime handler of this host's containers."""
    can_checkpoint: bool = False
    """Whether this host checkpoints and restores running containers (CRIU)."""
    offers_kata: bool | None = None
    """Whether the host runs Kata (sandboxed) services; None means when its
    handler is Kata's. True with the runc handler makes a host that follows
    Kata's rules without Kata, for machines where Kata cannot be installed."""
    criu_path: str | None = None
    """CRIU binary runc should call; None uses the first ``criu`` on PATH."""
    tls_cert: str | None = None
    """PEM certificate to serve HTTPS with; plain HTTP when None."""
    tls_key: str | None = None
    """PEM private key of ``tls_cert``."""
    tls_ca: str | None = None
    """CA bundle to verify HTTPS peer agents with; the system's when None."""
    ctr_path: str = "ctr"
    """containerd's ``ctr`` client."""

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must not be empty")
        host, _, port = self.listen.rpartition(":")
        check(
            bool(host) and port.isdigit() and int(port) < 65536,
            "listen",
            f"expected ADDR:PORT, got {self.listen!r}",
        )
        check(
            self.runtime_handler in RUNTIME_HANDLERS,
            "runtime_handler",
            f"must be one of {', '.join(RUNTIME_HANDLERS)}; "
            f"got {self.runtime_handler!r}",
        )
        check(
            not (self.can_checkpoint and self.runtime_handler != RUNC_HANDLER),
            "can_checkpoint",
            f"only {RUNC_HANDLER} can checkpoint",
        )
        check(
            not (self.can_checkpoint and self.offers_kata),
            "can_checkpoint",
            "a host offering kata follows Kata's rules and cannot checkpoint",
        )
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(
                "listen", f"expected ADDR:PORT, got {self.listen!r}"
            ) from None
        check(
            (self.tls_cert is None) == (self.tls_key is None),
            "tls_key",
            "tls_cert and tls_key go together",
        )

    @property
    def address(self) -> tuple[str, int]:
        """The listen address as (host, port)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Mecrl runtimes this host can run: Kata hosts run runc images too."""
        kata = self.offers_kata
        if kata is None:
            kata = self.runtime_handler == KATA_HANDLER
        return ("runc", "kata") if kata else ("runc",)

    @classmethod
    def from_file(cls, path: str | Path) -> HostAgentConfig:
        """Load a config from YAML or TOML; unknown keys are an error."""
        return from_dict(cls, load_file(path))


def read_token(path: str | Path) -> str:
    """Return the token held in ``path``, without surrounding whitespace.

    Raises:
        ValueError: If the file is empty.
    """
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {str(path)!r} is empty")
    return token
