"""A crash check for llama.cpp on this CPU, run in a child process before the model is used in-process.

A llama.cpp build can crash the whole process with a segmentation fault on some CPUs (its AMX path on
Intel Xeon hosts, issue 11): the user would see a bare "Segmentation fault" and lose the session. The
first time a model is used with a given llama.cpp build on a given CPU, a child process loads it and
generates two tokens; if the child dies from a signal, the user gets an error naming the cause and the
way out instead. A passing check is remembered (keyed by model file, llama.cpp build and CPU), so it
costs one model load once, not every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
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


def check(model: Path, threads: int = 2) -> None:
    """Raise EngineError if llama.cpp crashes running `model` on this machine (checked once per build/CPU)."""
    if os.environ.get("VOICECLI_LLAMA_CHECK", "1") == "0":
        return
    stamp = _stamp_dir() / _key(model)
    if stamp.exists():
        return
    cmd = _probe_command(model, threads)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return  # slow, not crashed: the in-process load reports its own errors
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode).name
        raise EngineError(
            f"llama.cpp crashed ({sig}) running {model.name} on this CPU ({platform.processor() or 'x86'}); "
            "on Intel Xeon CPUs with AMX this is llama.cpp's AMX code path",
            hint="rebuild llama-cpp-python without it: `bash scripts/setup.sh` (it builds for this CPU without "
            "AMX), or use another model (`voicecli models list`); details: " + done.stderr.strip()[-200:],
        )
    if done.returncode == 0:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"model": str(model), "ok": True}))
    # Any other failure (a bad file, say) is left to the in-process load, which explains it properly.


def _probe_command(model: Path, threads: int) -> list[str]:
    return [sys.executable, "-m", "voicecli.engines.llm_probe", str(model), str(threads)]


def _main(model: str, threads: int) -> None:
    import asyncio

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
