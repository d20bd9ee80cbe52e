"""The session transcript file: written off the event loop, created with its first record."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from voicecli.pipeline.transcript import TranscriptLog, read


def test_no_file_until_the_first_turn(tmp_path: Path) -> None:
    path = tmp_path / "sessions" / "s.jsonl"
    t = TranscriptLog(path)
    assert t.close() is None
    assert not path.exists() and not path.parent.exists()  # before: an empty file from a failed start


def test_records_are_on_disk_when_closed_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    t = TranscriptLog(path)
    for i in range(50):
        t.append({"turn": i, "user": "hello", "assistant": "hi ✓"})
    assert t.close() is None
    assert [r["turn"] for r in read(path)] == list(range(50))
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["assistant"] == "hi ✓"


def test_a_write_error_is_reported_not_raised_on_the_loop(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    t = TranscriptLog(blocker / "s.jsonl")  # its parent is a file: every write fails
    t.append({"turn": 1})
    error = t.close()
    assert isinstance(error, OSError)


def test_append_never_waits_for_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session appends on the event loop; an fsync on a busy disk must not stall it."""
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.2)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    t = TranscriptLog(tmp_path / "s.jsonl")
    t0 = time.monotonic()
    for i in range(3):
        t.append({"turn": i})
    took = time.monotonic() - t0
    assert t.close() is None
    assert took < 0.05, f"append blocked {took * 1000:.0f} ms"  # before: 600 ms of fsync on the loop
    assert [r["turn"] for r in read(tmp_path / "s.jsonl")] == [0, 1, 2]
