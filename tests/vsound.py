"""pytest fixtures for the virtual sound card (scripts/vsound.sh, DESIGN.md section 5).

Use the session-scoped `vsound` fixture (re-exported by tests/conftest.py); mark such tests
`@pytest.mark.audio`. It starts one headless PulseAudio rig per test session in a temp dir, exports
its environment into os.environ (so subprocesses such as `python -m voicecli` reach it too) and, if
sounddevice was already imported, re-initialises PortAudio so the virtual devices are listed.

Devices, as PortAudio sees them (pass these names to Capture / Playback / `--input` / `--output`):
    VSound.MIC = "voicecli_mic"          virtual microphone (ALSA "default"/"pulse" reach it too)
    VSound.SPEAKER = "voicecli_speaker"  virtual speaker (likewise), 44.1 kHz mono

Helpers on the fixture object (a `VSound`):
    t = vsound.feed(path_or_int16_array, rate)   play into the virtual mic, non-blocking; returns the
        time.monotonic() at which the first sample was handed to PulseAudio (the mic hears it a few
        tens of ms later). The feed buffers 200 ms so a busy machine cannot punch holes in it.
        `rate` is needed for arrays (WAV files carry their own).
    vsound.wait_feeds()                         block until every feed has finished playing.
    with vsound.record() as rec: ...            capture the virtual speaker (its monitor) meanwhile;
        afterwards rec.pcm (int16 mono), rec.rate, rec.t0 (monotonic time of rec.pcm[0], +-20 ms).
    with vsound.mic_rate(48000): ...            run the virtual mic at another rate (resampling tests).
    with vsound.echo(delay_ms=120, volume=0.3): ...  speaker -> mic loopback, like desktop speakers.
    vsound.unplug("mic" | "speaker")            remove the device mid-stream: its streams die, as with
        unplugged USB hardware; vsound.plug(...) brings it back under the same name and format.
    vsound.env                                  the exported variables (for subprocess env=).
    speak(text, path, voice=..., speed=...)     espeak-ng a sentence to a WAV (fixture data at test time).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "vsound.sh"


def read_wav(path: str | Path) -> tuple[npt.NDArray[np.int16], int]:
    """Mono int16 samples and rate of a 16-bit WAV (first channel if several)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit WAVs are supported")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm.reshape(-1, w.getnchannels())[:, 0].copy(), w.getframerate()


def write_wav(path: str | Path, pcm: npt.NDArray[np.int16], rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype=np.int16).tobytes())
    return Path(path)


def speak(text: str, path: str | Path, voice: str = "en-us", speed: int = 160) -> Path:
    """espeak-ng `text` into a WAV (22.05 kHz mono int16)."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return Path(path)


@dataclass
class Recording:
    rate: int
    t0: float = 0.0
    pcm: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, np.int16))


def _pulse_stream(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """Start pacat/parec verbosely and wait until its stream is connected to the server."""
    proc = subprocess.Popen([*args, "-v"], stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"{args[0]} exited before its stream started: {args}")
        if b"Stream successfully created" in line:
            break
    # keep draining stderr so the process never blocks on a full pipe
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc


class VSound:
    MIC = "voicecli_mic"
    SPEAKER = "voicecli_speaker"
    MIC_SINK = "vmic_feed"
    SPEAKER_MONITOR = "vspeaker.monitor"
    SPEAKER_RATE = 44100

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env: dict[str, str] = {}
        self._feeds: list[tuple[subprocess.Popen[bytes], float]] = []  # (pacat, clip seconds)

    def sh(self, *args: str) -> str:
        out = subprocess.run(
            [str(SCRIPT), *args], check=True, capture_output=True, text=True, env={**os.environ, **self.env}
        )
        return out.stdout

    def start(self) -> None:
        self.sh("start", str(self.dir))
        for line in self.sh("env", str(self.dir)).splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = value.strip("'")
        os.environ.update(self.env)
        if "sounddevice" in sys.modules:  # PortAudio listed devices before the rig was up: rescan
            sd = sys.modules["sounddevice"]
            sd._terminate()
            sd._initialize()

    def stop(self) -> None:
        for proc, _ in self._feeds:
            if proc.poll() is None:
                proc.kill()
        self._keep_log_if_dead()
        self.sh("stop", str(self.dir))
        shutil.rmtree(self.dir, ignore_errors=True)

    def _keep_log_if_dead(self) -> None:
        """A daemon that died under the tests (one CI run lost it between two audio tests, and every test after
        failed) leaves its log in the temp dir, named after the rig, for the next engineer to read."""
        try:  # a killed daemon stays a zombie until the rig's shell reaps it: read its state, not just its pid
            stat = Path(f"/proc/{int((self.dir / 'pids' / 'daemon').read_text())}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                return
        except (OSError, ValueError, IndexError):
            pass
        log = self.dir / "log" / "pulseaudio.log"
        if log.exists():
            kept = Path(tempfile.gettempdir()) / f"{self.dir.name}-pulseaudio.log"
            shutil.copyfile(log, kept)
            print(f"vsound: the daemon of {self.dir} had died; its log: {kept}", file=sys.stderr)

    def feed(self, source: str | Path | npt.NDArray[np.int16], rate: int | None = None) -> float:
        """Play `source` into the virtual mic; returns the monotonic time its first sample was queued."""
        if isinstance(source, str | Path):
            pcm, rate = read_wav(source)
        else:
            if rate is None:
                raise ValueError("feed(array, rate): the rate of an array is required")
            pcm = np.asarray(source, dtype=np.int16)
        # From a file, not a pipe: a pipe closed before the clip has played makes pacat spin on its end of file
        # for the length of the clip (~half a core), taken from the assistant while the "user" speaks.
        with tempfile.TemporaryFile() as clip:
            clip.write(pcm.tobytes())
            clip.seek(0)
            t = time.monotonic()  # pacat writes its first samples as its stream connects, before it says so
            proc = _pulse_stream(
                ["pacat", "--playback", "-d", self.MIC_SINK, "--raw", "--format=s16le", f"--rate={rate}",
                 "--channels=1", "--latency-msec=200"],
                stdin=clip,
            )  # fmt: skip
        self._feeds.append((proc, len(pcm) / rate))
        return t

    def wait_feeds(self, timeout: float = 60.0) -> None:
        """Block until every clip fed has played; `timeout`: seconds allowed beyond each clip's length."""
        for proc, clip_s in self._feeds:
            proc.wait(clip_s + timeout)
        self._feeds.clear()

    @contextlib.contextmanager
    def record(self, rate: int | None = None) -> Iterator[Recording]:
        """Record the virtual speaker while the block runs; the result is filled in on exit."""
        rec = Recording(rate=rate or self.SPEAKER_RATE)
        proc = _pulse_stream(
            ["parec", "-d", self.SPEAKER_MONITOR, "--raw", "--format=s16le", f"--rate={rec.rate}",
             "--channels=1", "--latency-msec=20"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        chunks: list[bytes] = []
        first = threading.Event()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()

        def reader() -> None:
            while data := os.read(fd, 65536):
                chunks.append(data)
                first.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        if not first.wait(3.0):  # audio must be flowing before the caller plays anything
            proc.kill()
            raise RuntimeError("the speaker monitor delivers no audio: is the rig up? (scripts/vsound.sh status)")
        rec.t0 = time.monotonic() - sum(map(len, chunks)) / 2 / rec.rate
        try:
            yield rec
        finally:
            time.sleep(0.1)  # let the last rendered block arrive
            proc.terminate()
            thread.join(10)
            proc.wait(10)
            raw = b"".join(chunks)
            rec.pcm = np.frombuffer(raw[: len(raw) // 2 * 2], dtype=np.int16).copy()

    @contextlib.contextmanager
    def mic_rate(self, rate: int) -> Iterator[None]:
        self.sh("mic-rate", str(rate), str(self.dir))
        try:
            yield
        finally:
            self.sh("mic-rate", "16000", str(self.dir))

    def unplug(self, which: str) -> None:
        self.sh("unplug", which, str(self.dir))

    def plug(self, which: str) -> None:
        self.sh("plug", which, str(self.dir))

    @contextlib.contextmanager
    def echo(self, delay_ms: int = 120, volume: float = 0.3, room: bool = False) -> Iterator[None]:
        """Loop the speaker back into the mic (desktop speakers); `room` adds three decaying reflections."""
        self.sh("echo", "room" if room else "on", str(delay_ms), str(volume), str(self.dir))
        try:
            yield
        finally:
            self.sh("echo", "off", str(self.dir))


def start_session_rig() -> VSound:
    rig = VSound(Path(tempfile.mkdtemp(prefix="voicecli-vsound-")))
    rig.start()
    return rig
