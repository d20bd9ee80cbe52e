"""A crash check for llama.cpp on this CPU, run in a child process before the model is used in-process.

A llama.cpp build can crash the whole process with a segmentation fault on some CPUs (its AMX path on
Intel Xeon hosts, issue 11): the user would see a bare "Segmentation fault" and lose the session. The
first time a model is used with a given llama.cpp build on a given CPU, a child process loads it and
generates two tokens; if the child dies from a fault signal, the user gets an error naming the cause and
the way out instead. A passing check is remembered (keyed by model file, llama.cpp build and CPU), so it
costs one model load once, not every start.

The child runs in its own session: a Ctrl-C at the terminal reaches the parent only, which kills the
child at once (`check` on KeyboardInterrupt, `check_async` when its task is cancelled), so an
interrupted check is neither a crash report nor a wait for the child to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from voicecli import paths
from voicecli.errors import EngineError

TIMEOUT_S = 120.0


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _key(model: Path) -> str:
    import llama_cpp

    from voicecli.engines.llm import system_info

    st = model.stat()
    parts = [str(model.resolve()), str(st.st_size), str(st.st_mtime_ns), llama_cpp.__version__, system_info()]
    parts += [str(Path(llama_cpp.__file__).parent.stat().st_mtime_ns), _cpu_flags()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _stamp_dir() -> Path:
    return paths.data_dir() / "llama-checks"


# A llama.cpp fault kills its process with one of these. Anything else (SIGINT from Ctrl-C, SIGTERM,
# SIGKILL from the OOM killer) says nothing about this CPU.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGABRT})
POLL_S = 0.1  # how often a probe run in a worker thread looks at its stop event


def check(model: Path, threads: int = 2, stop: threading.Event | None = None) -> None:
    """Raise EngineError if llama.cpp crashes running `model` on this machine (checked once per build/CPU).

    The probe child runs in its own session, so a Ctrl-C at the terminal reaches only this process: a
    KeyboardInterrupt here, or `stop` set by another thread (see `check_async`), kills the child at once
    and ends the check without a verdict.
    """
    if os.environ.get("VOICECLI_LLAMA_CHECK", "1") == "0":
        return
    stamp = _stamp_dir() / _key(model)
    if stamp.exists():
        return
    done = _run_probe(_probe_command(model, threads), stop)
    if done is None:
        return  # slow or stopped, not crashed: the in-process load reports its own errors
    returncode, stderr = done
    if returncode < 0 and -returncode in CRASH_SIGNALS:
        sig = signal.Signals(-returncode).name
        raise EngineError(
            f"llama.cpp crashed ({sig}) running {model.name} on this CPU ({platform.processor() or 'x86'}); "
            "on Intel Xeon CPUs with AMX this is llama.cpp's AMX code path",
            hint="rebuild llama-cpp-python without it: `bash scripts/setup.sh` (it builds for this CPU without "
            "AMX), or use another model (`voicecli models list`); details: " + stderr.strip()[-200:],
        )
    if returncode == 0:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"model": str(model), "ok": True}))
    # Any other failure (a bad file, a signal from outside) is left to the in-process load, which explains it.


async def check_async(model: Path, threads: int = 2) -> None:
    """`check` off the event loop; cancelling the awaiting task kills the probe child at once."""
    stop = threading.Event()
    worker = asyncio.ensure_future(asyncio.to_thread(check, model, threads, stop))
    try:
        await asyncio.shield(worker)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await worker  # returns within POLL_S, the child gone
        raise


def _run_probe(cmd: list[str], stop: threading.Event | None) -> tuple[int, str] | None:
    """Run the probe child in its own session: (return code, stderr), or None when it timed out or was
    stopped. Whatever ends the wait early (KeyboardInterrupt included) kills the child first."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            try:
                _, stderr = proc.communicate(timeout=POLL_S if stop is not None else TIMEOUT_S)
                return proc.returncode, stderr
            except subprocess.TimeoutExpired:
                if (stop is not None and stop.is_set()) or time.monotonic() >= deadline:
                    return None
    finally:
        if proc.returncode is None:
            _kill(proc)


def _kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the child's whole session (llama.cpp's threads and anything it started), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its session's group id is its pid
    proc.communicate()


def _probe_command(model: Path, threads: int) -> list[str]:
    return [sys.executable, "-m", "voicecli.engines.llm_probe", str(model), str(threads)]


def _main(model: str, threads: int) -> None:
    from voicecli.engines.base import ChatMessage
    from voicecli.engines.llm import LlamaLLM

    async def run() -> None:
        llm = LlamaLLM(model, threads=threads, n_ctx=512)
        await llm.start()
        await llm.chat([ChatMessage("user", "Hello")], max_tokens=2).text()
        await llm.close()

    asyncio.run(run())


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
