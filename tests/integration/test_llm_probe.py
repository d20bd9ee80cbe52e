"""The first-run llama.cpp crash check (engines/llm_probe.py) and Ctrl-C (issue 17, defect 8).

The probe child used to share the terminal's process group: Ctrl-C killed it with SIGINT, and the
check reported that as an AMX crash with the rebuild hint. Real child processes throughout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voicecli.engines import llm_probe
from voicecli.errors import EngineError

FAULTS = [signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGABRT]
NOT_FAULTS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP]


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file to key the check on (the probe command is replaced, so it is never loaded)."""
    monkeypatch.setenv("VOICECLI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOICECLI_LLAMA_CHECK", raising=False)
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def probe_runs(monkeypatch: pytest.MonkeyPatch, code: str, *args: str) -> None:
    monkeypatch.setattr(llm_probe, "_probe_command", lambda m, t: [sys.executable, "-c", code, *args])


def dies_by(sig: signal.Signals) -> str:
    reset = "" if sig == signal.SIGKILL else f"signal.signal({int(sig)}, signal.SIG_DFL); "  # Python's own handlers
    return f"import os, signal; {reset}os.kill(os.getpid(), {int(sig)})"


@pytest.mark.parametrize("sig", NOT_FAULTS, ids=lambda s: s.name)
def test_a_probe_killed_from_outside_is_not_a_crash(model: Path, monkeypatch: pytest.MonkeyPatch, sig: int) -> None:
    probe_runs(monkeypatch, dies_by(signal.Signals(sig)))
    llm_probe.check(model)  # no verdict: the in-process load goes ahead
    assert not any(llm_probe._stamp_dir().glob("*"))  # nor a pass remembered


@pytest.mark.parametrize("sig", FAULTS, ids=lambda s: s.name)
def test_a_probe_killed_by_a_fault_is_a_crash_naming_it(model: Path, monkeypatch: pytest.MonkeyPatch, sig: int) -> None:
    probe_runs(monkeypatch, dies_by(signal.Signals(sig)))
    with pytest.raises(EngineError) as err:
        llm_probe.check(model)
    assert signal.Signals(sig).name in err.value.message and "scripts/setup.sh" in err.value.hint


def test_the_probe_child_runs_in_its_own_session(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ids"
    probe_runs(monkeypatch, "import os, sys; open(sys.argv[1], 'w').write(f'{os.getpid()} {os.getsid(0)}')", str(out))
    llm_probe.check(model)
    pid, sid = map(int, out.read_text().split())
    assert sid == pid != os.getsid(0)  # a session leader: the terminal's Ctrl-C does not reach it


PARENT = """
import asyncio, signal, sys
from pathlib import Path
from voicecli.engines import llm_probe

# A terminal delivers Ctrl-C; a test run started in the background by a non-interactive shell (CI) inherits
# SIGINT ignored, and Python then never raises KeyboardInterrupt: restore what a terminal gives.
signal.signal(signal.SIGINT, signal.default_int_handler)

model, pidfile, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
child = f"import os, time; open({pidfile!r}, 'w').write(str(os.getpid())); time.sleep(60)"
llm_probe._probe_command = lambda m, t: [sys.executable, "-c", child]
if mode == "sync":
    llm_probe.check(model)
else:  # as under `voicecli talk`: asyncio.run turns Ctrl-C into cancelling the task, then KeyboardInterrupt
    asyncio.run(llm_probe.check_async(model))
print("the check ended without the interrupt")
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ctrl_c_during_the_probe_kills_it_at_once_and_propagates(model: Path, tmp_path: Path, mode: str) -> None:
    pidfile = tmp_path / "child.pid"
    env = {**os.environ, "VOICECLI_DATA_DIR": str(tmp_path / "data")}
    # Its own session stands for the terminal's foreground process group: Ctrl-C signals all of it.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(model), str(pidfile), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()):
            assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
            time.sleep(0.02)
        child = int(pidfile.read_text())
        t0 = time.monotonic()
        os.killpg(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
    assert parent.returncode in (-signal.SIGINT, 130), (out, err)
    assert "KeyboardInterrupt" in err and "AMX" not in err and "crashed" not in err
    assert "ended without" not in out
    assert took < 2.0
    deadline = time.monotonic() + 2
    while not gone(child):
        assert time.monotonic() < deadline, "the probe child outlived Ctrl-C"
        time.sleep(0.02)


def test_a_probe_slower_than_the_timeout_is_killed_without_a_verdict(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "child.pid"
    probe_runs(
        monkeypatch,
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)",
        str(pidfile),
    )
    monkeypatch.setattr(llm_probe, "TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    llm_probe.check(model)
    assert time.monotonic() - t0 < 5 and gone(int(pidfile.read_text()))
    assert not any(llm_probe._stamp_dir().glob("*"))
