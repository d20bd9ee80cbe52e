"""The session transcript: one JSON line per finished turn, flushed and fsynced, so a crash or kill keeps
every completed turn.

The write and fsync run in a writer thread (an fsync can take tens of milliseconds on a busy disk, and the
session calls `append` on the event loop). The file is created with the first record, so a session that
fails at start-up (a missing model, say) leaves no empty transcript behind. A write error is raised by the
next `append` (or returned by `close`), so the session can tell the user.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import IO, Any

from voicecli import paths

QUEUE_RECORDS = 256  # one record per turn: never full unless the disk has stalled for minutes


def new_session_path() -> Path:
    return paths.sessions_dir() / time.strftime("%Y%m%d-%H%M%S.jsonl")


class TranscriptLog:
    """The session's log of finished turns (not an STT `engines.base.Transcript`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_RECORDS)
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record for writing (never blocks on the disk). Raises the last write error, once."""
        if self._closed:
            return
        self._raise_pending()
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="transcript", daemon=True)
            self._thread.start()
        self._queue.put(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> OSError | None:
        """Write what is queued, then close. Returns a write error that was not reported yet."""
        if self._closed:
            return None
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10.0)
        error, self._error = self._error, None
        return error

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _writer(self) -> None:
        fh: IO[str] | None = None
        try:
            while (line := self._queue.get()) is not None:
                try:
                    if fh is None:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        fh = self.path.open("a", encoding="utf-8")
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:
                    self._error = exc
        finally:
            if fh is not None:
                fh.close()


def read(path: Path) -> list[dict[str, Any]]:
    """All complete records (a torn last line from a kill is skipped)."""
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
