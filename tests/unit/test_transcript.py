"""The session transcript file: written off the event loop, created with its first record."""

from __future__ import annotations

import json
from pathlib import Path

from voicecli.pipeline.transcript import Transcript, read


def test_no_file_until_the_first_turn(tmp_path: Path) -> None:
    path = tmp_path / "sessions" / "s.jsonl"
    t = Transcript(path)
    assert t.close() is None
    assert not path.exists() and not path.parent.exists()  # before: an empty file from a failed start


def test_records_are_on_disk_when_closed_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    t = Transcript(path)
    for i in range(50):
        t.append({"turn": i, "user": "hello", "assistant": "hi ✓"})
    assert t.close() is None
    assert [r["turn"] for r in read(path)] == list(range(50))
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["assistant"] == "hi ✓"


def test_a_write_error_is_reported_not_raised_on_the_loop(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    t = Transcript(blocker / "s.jsonl")  # its parent is a file: every write fails
    t.append({"turn": 1})
    error = t.close()
    assert isinstance(error, OSError)
