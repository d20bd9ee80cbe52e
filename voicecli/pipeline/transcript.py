"""The session transcript: one JSON line per finished turn, flushed and fsynced, so a crash or kill keeps
every completed turn."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

from voicecli import paths


def new_session_path() -> Path:
    return paths.sessions_dir() / time.strftime("%Y%m%d-%H%M%S.jsonl")


class Transcript:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: IO[str] | None = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read(path: Path) -> list[dict[str, Any]]:
    """All complete records (a torn last line from a kill is skipped)."""
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
