"""The spoken turns a benchmark feeds: a built-in corpus spoken by espeak-ng (varied sentences, lengths and
voices, some with a mid-sentence pause or background noise, some that interrupt the reply), or a directory
of WAVs with optional .txt transcripts. Ground truth (where speech starts and ends inside each clip) comes
from the clip itself, never from the VAD under test."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from voicecli import paths
from voicecli.audio.format import SAMPLE_RATE
from voicecli.errors import VoicecliError

# (text, espeak voice, words per minute, variant); variant: "" | "pauseMS" | "noise" | "interrupt".
# "pauseMS": a silence of MS ms in the middle of the sentence (300-450 ms: such a pause must never split
# the turn); the benchmark reports false splits on these clips.
BUILTIN: list[tuple[str, str, int, str]] = [
    ("What is the weather like today?", "en-us", 165, ""),
    ("Can you tell me a fun fact about the moon?", "en+f3", 170, ""),
    ("Set a timer for ten minutes, please.", "en-gb", 160, "noise"),
    ("Wait, tell me something else instead.", "en+m3", 175, "interrupt"),
    ("How far away is the nearest star from the sun?", "en-us", 155, "pause350"),
    ("Give me a short recipe for pancakes.", "en+f3", 165, ""),
    ("What time is it in Tokyo right now?", "en-gb", 170, "noise"),
    ("Actually, never mind that.", "en-us", 170, "interrupt"),
    ("Why is the sky blue during the day?", "en+m3", 160, ""),
    ("Tell me a joke about computers and cats.", "en-us", 175, "pause450"),
    ("Which planet in our solar system is the largest?", "en+f3", 165, "pause300"),
    ("What should I cook for dinner tonight with rice?", "en-gb", 160, "pause400"),
]


@dataclass(frozen=True)
class Clip:
    """One fed utterance: mono int16 at 16 kHz, with the ground-truth speech span inside it (seconds)."""

    name: str
    pcm: npt.NDArray[np.int16]
    text: str
    speech_start_s: float
    speech_end_s: float
    interrupt: bool = False  # fed while the previous reply is playing
    paused_ms: int = 0  # a mid-sentence pause of this many ms (the paused-speech corpus)

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def speech_span(pcm: npt.NDArray[np.int16], threshold_dbfs: float = -40.0) -> tuple[float, float]:
    """First and last 10 ms window above the threshold: where the speech really is."""
    win = SAMPLE_RATE // 100
    n = len(pcm) // win
    x = pcm[: n * win].astype(np.float32).reshape(n, win) / 32768.0
    loud = np.flatnonzero(20 * np.log10(np.sqrt(np.mean(x * x, axis=1)) + 1e-9) > threshold_dbfs)
    if loud.size == 0:
        return 0.0, 0.0
    return loud[0] * win / SAMPLE_RATE, (loud[-1] + 1) * win / SAMPLE_RATE


def _read_wav(path: Path) -> npt.NDArray[np.int16]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise VoicecliError(f"{path} is not a 16-bit WAV", hint="convert it: sox in.wav -b 16 out.wav")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
        rate = w.getframerate()
    mono = pcm.astype(np.float32).mean(axis=1) / 32768.0
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.clip(np.rint(mono * 32767), -32768, 32767).astype(np.int16)


def _espeak(text: str, voice: str, wpm: int, out: Path) -> npt.NDArray[np.int16]:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out), text], check=True)
    return _read_wav(out)


def _with_margins(pcm: npt.NDArray[np.int16], lead_s: float = 0.3, tail_s: float = 0.2) -> npt.NDArray[np.int16]:
    return np.concatenate(
        [np.zeros(int(lead_s * SAMPLE_RATE), np.int16), pcm, np.zeros(int(tail_s * SAMPLE_RATE), np.int16)]
    )


def builtin(cache: Path | None = None) -> list[Clip]:
    """Speak the built-in corpus with espeak-ng (once; cached as WAVs)."""
    if shutil.which("espeak-ng") is None:
        raise VoicecliError(
            "the built-in benchmark corpus is spoken by espeak-ng, which is not installed",
            hint="sudo apt-get install espeak-ng, or pass --corpus DIR with your own WAVs",
        )
    cache = cache or paths.data_dir() / "bench-corpus"
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    clips = []
    for i, (text, voice, wpm, variant) in enumerate(BUILTIN):
        with tempfile.TemporaryDirectory() as tmp:
            paused_ms = int(variant[5:]) if variant.startswith("pause") else 0
            if paused_ms:
                # A mid-sentence pause longer than the early-pause signal, shorter than the end of turn.
                words = text.split()
                half = len(words) // 2
                a = _espeak(" ".join(words[:half]), voice, wpm, Path(tmp) / "a.wav")
                b = _espeak(" ".join(words[half:]), voice, wpm, Path(tmp) / "b.wav")
                a = a[: int(speech_span(a)[1] * SAMPLE_RATE)]
                b = b[int(speech_span(b)[0] * SAMPLE_RATE) :]
                pcm = np.concatenate([a, np.zeros(int(paused_ms / 1000 * SAMPLE_RATE), np.int16), b])
            else:
                pcm = _espeak(text, voice, wpm, Path(tmp) / "s.wav")
        s0, s1 = speech_span(pcm)
        pcm = _with_margins(pcm[int(s0 * SAMPLE_RATE) : int(s1 * SAMPLE_RATE)])
        start, end = speech_span(pcm)
        if variant == "noise":
            noise = rng.normal(0, 0.004 * 32768, len(pcm))  # about -48 dBFS of hiss under the voice
            pcm = np.clip(pcm + noise, -32768, 32767).astype(np.int16)
        clips.append(
            Clip(f"{i:02d}-{variant or 'plain'}", pcm, text, start, end, variant == "interrupt", paused_ms=paused_ms)
        )
    return clips


def from_dir(directory: Path) -> list[Clip]:
    wavs = sorted(directory.glob("*.wav"))
    if not wavs:
        raise VoicecliError(f"no .wav files in {directory}", hint="pass a directory of WAV files (16-bit)")
    clips = []
    for wav in wavs:
        pcm = _with_margins(_read_wav(wav))
        txt = wav.with_suffix(".txt")
        start, end = speech_span(pcm)
        if end <= start:
            raise VoicecliError(f"{wav} holds no audible speech", hint="check the file, or remove it")
        text = txt.read_text(encoding="utf-8").strip() if txt.exists() else ""
        clips.append(Clip(wav.stem, pcm, text, start, end, interrupt=wav.stem.endswith("-interrupt")))
    return clips


def pick(clips: list[Clip], turns: int) -> list[Clip]:
    """`turns` clips, cycling through the corpus; an interrupting clip never comes first."""
    out: list[Clip] = []
    i = 0
    while len(out) < turns:
        clip = clips[i % len(clips)]
        i += 1
        if clip.interrupt and not out:
            continue
        out.append(clip)
    return out
