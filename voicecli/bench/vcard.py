"""The virtual sound card for benchmarks: reuse a running rig (PULSE_SERVER set) or start scripts/vsound.sh,
and feed clips into its microphone. Must run before sounddevice is imported (PortAudio lists devices once)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voicecli.audio.format import SAMPLE_RATE
from voicecli.errors import DeviceError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vsound.sh"
MIC = "voicecli_mic"
SPEAKER = "voicecli_speaker"
MIC_FEED_SINK = "vmic_feed"


def _rig_running() -> bool:
    if not os.environ.get("PULSE_SERVER") or shutil.which("pactl") is None:
        return False
    out = subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True, timeout=5)
    return MIC_FEED_SINK in out.stdout


@contextlib.contextmanager
def virtual_card() -> Iterator[None]:
    """Make the virtual mic and speaker available for the duration; stops only a rig it started."""
    if _rig_running():
        yield
        return
    if shutil.which("pulseaudio") is None or not SCRIPT.exists():
        raise DeviceError(
            "the benchmark feeds speech through a virtual sound card, and PulseAudio is not installed",
            hint="sudo apt-get install pulseaudio pulseaudio-utils libasound2-plugins",
        )
    directory = tempfile.mkdtemp(prefix="voicecli-bench-vsound-")
    subprocess.run(["bash", str(SCRIPT), "start", directory], check=True, capture_output=True, timeout=60)
    saved = dict(os.environ)
    try:
        env = subprocess.run(
            ["bash", str(SCRIPT), "env", directory], check=True, capture_output=True, text=True, timeout=10
        ).stdout
        for line in env.splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                os.environ[key] = value.strip().strip("'\"")
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        subprocess.run(["bash", str(SCRIPT), "stop", directory], capture_output=True, timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def loopback(delay_ms: int, level_db: float) -> Iterator[None]:
    """Loop the virtual speaker back into the virtual mic for the duration, `delay_ms` late and `level_db`
    down: every reply comes back like desktop speakers (scripts/vsound.sh echo on)."""
    directory = os.environ.get("VSOUND_DIR", "")
    volume = f"{10 ** (level_db / 20):.4f}"
    cmd = ["bash", str(SCRIPT), "echo", "on", str(delay_ms), volume, directory]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["bash", str(SCRIPT), "echo", "off", directory], capture_output=True, timeout=30)


async def feed(pcm: npt.NDArray[np.int16]) -> float:
    """Play 16 kHz mono int16 into the virtual mic without waiting for it to finish.
    Returns the monotonic time the audio was handed over (the benchmark locates it exactly afterwards).

    pacat reads the clip from a file, not a pipe: a pipe closed before the clip has been played makes pacat spin
    on its end of file for the length of the clip (1.97 s of CPU over a 4 s clip, measured), which
    took half a core from the assistant exactly while the user spoke."""
    with tempfile.TemporaryFile() as clip:  # pacat keeps its own descriptor
        clip.write(pcm.astype("<i2").tobytes())
        clip.seek(0)
        proc = await asyncio.create_subprocess_exec(
            "pacat", "--playback", "-d", MIC_FEED_SINK, "--format=s16le", f"--rate={SAMPLE_RATE}",
            "--channels=1", "--latency-msec=20", stdin=clip,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        t = time.monotonic()
    asyncio.get_running_loop().create_task(proc.wait())
    return t
