"""The migration journal: every step of every migration, on disk first.

The journal is a file of JSON lines, only ever appended to, each line
flushed and fsync'd before the step it records is taken further. A
controller that restarts reads it back and finds the migrations that have
neither finished nor been rolled back (see :mod:`mecrl.hosts.recovery`).
A line cut short by a crash mid-write is the last one and is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

END_STEPS: tuple[str, ...] = ("done", "rolled_back")
"""Steps after which a migration needs nothing more."""


@dataclass
class Migration:
    """A migration as the journal tells it."""

    migration: str
    """Unique id."""
    begin: dict[str, Any]
    """The opening record: service, source, target, mode and spec."""
    steps: list[str] = field(default_factory=list)
    """Every step recorded, in order, ``begin`` first."""

    @property
    def finished(self) -> bool:
        """Whether it ended, done or rolled back."""
        return bool(self.steps) and self.steps[-1] in END_STEPS

    def reached(self, step: str) -> bool:
        """Whether ``step`` was recorded."""
        return step in self.steps


class Journal:
    """An append-only, fsync'd JSON-lines file of migration steps.

    Args:
        path: The journal file; created with its folder if missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # the new file's name must reach the disk as well as its lines
            self.path.touch()
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        self._counter = 0

    def new_id(self, service: str) -> str:
        """Return an id no other migration in this journal has."""
        self._counter += 1
        return f"{service}-{time.time_ns()}-{os.getpid()}-{self._counter}"

    def append(self, migration: str, step: str, **data: Any) -> None:
        """Record ``step`` of ``migration`` durably before returning."""
        line = json.dumps(
            {"migration": migration, "step": step, "time": time.time(), **data}
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        logger.info("journal %s: %s", migration, step)

    def migrations(self) -> list[Migration]:
        """Return every migration in the journal, in the order begun."""
        if not self.path.exists():
            return []
        found: dict[str, Migration] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                logger.warning("%s:%d: skipping a torn record", self.path, number)
                continue
            key, step = record["migration"], record["step"]
            if step == "begin":
                found[key] = Migration(key, record)
            if key in found:
                found[key].steps.append(step)
        return list(found.values())

    def unfinished(self) -> list[Migration]:
        """Return the migrations neither done nor rolled back."""
        return [m for m in self.migrations() if not m.finished]
