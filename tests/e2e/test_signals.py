"""Ctrl-C / SIGTERM / SIGKILL at different stages of `voicecli talk`: a quick exit, streams closed, no orphan
worker processes, and a transcript holding every finished turn."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_talk import Talk
from tests.vsound import VSound, speak

pytestmark = [pytest.mark.audio, pytest.mark.engines, pytest.mark.slow]


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def second_reply_playing(t: Talk, vsound: VSound, tmp_path: Path) -> None:
    """One finished turn, then the second reply is playing."""
    q = speak("What is the weather like today?", tmp_path / "q.wav")
    vsound.feed(q)
    t.wait_for(lambda e: e["kind"] == "turn_end" and e["turn"] == 1, timeout=60)
    vsound.feed(q)
    t.wait_for(lambda e: e["kind"] == "state" and e["state"] == "speaking" and e["turn"] == 2, timeout=60)


def stop_and_time(t: Talk, sig: int) -> float:
    t0 = time.monotonic()
    t.proc.send_signal(sig)
    t.proc.wait(timeout=10)
    return time.monotonic() - t0


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return set()
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_listening_exits_fast_without_orphans(talk: Callable[..., Talk], sig: int) -> None:
    t = talk()
    workers = descendants(t.proc.pid)
    assert workers, "the STT process pool should be running"
    took = stop_and_time(t, sig)
    assert took < 1.5, f"exit took {took:.2f} s"
    assert t.proc.returncode in (0, 130)
    assert wait_gone(workers, 2.0) == set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_reply_keeps_finished_turns(
    talk: Callable[..., Talk], vsound: VSound, tmp_path: Path, sig: int
) -> None:
    t = talk()
    second_reply_playing(t, vsound, tmp_path)
    time.sleep(0.3)
    workers = descendants(t.proc.pid)
    took = stop_and_time(t, sig)
    assert took < 1.5, f"exit took {took:.2f} s"
    assert wait_gone(workers, 2.0) == set()
    records = t.transcript()
    assert records[0]["turn"] == 1 and records[0]["interrupted"] is False and records[0]["assistant"]
    # the reply in flight is either recorded as cut off or not at all; nothing else is lost
    assert len(records) <= 2
    if len(records) == 2:
        assert records[1]["interrupted"] is True


def test_sigkill_loses_at_most_the_turn_in_flight(talk: Callable[..., Talk], vsound: VSound, tmp_path: Path) -> None:
    t = talk()
    second_reply_playing(t, vsound, tmp_path)
    workers = descendants(t.proc.pid)
    t.proc.kill()
    t.proc.wait(timeout=5)
    lines = t.transcript_path.read_text().splitlines()
    assert [json.loads(line)["turn"] for line in lines] == [1]
    # the STT workers notice their parent is gone and exit on their own
    assert wait_gone(workers, 5.0) == set()
