#!/usr/bin/env python3
"""WER and compute time of whisper's 30 s window against the short window (voicecli/engines/stt.py).

A corpus of spoken questions with known text, spoken by several espeak-ng voices and by the real Piper
en_US-joe-medium voice, each transcribed by the STT worker's own code (in this process, no pool) with the
30 s window (window_floor_s 0) and with each short-window floor, interleaved utterance by utterance so a busy
machine slows every window alike. Real weights come from voicecli.testmodels.realweights (cached).

    .venv/bin/python scripts/stt_window_wer.py --model tiny.en
    .venv/bin/python scripts/stt_window_wer.py --model base --floors 5,10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicecli.audio.format import SAMPLE_RATE
from voicecli.bench.wer import corpus_wer, word_errors
from voicecli.engines import stt

QUESTIONS = (
    "What is the weather like today?",
    "Turn off the lights.",
    "How far away is the nearest star from the sun?",
    "Can you tell me a fun fact about the moon?",
    "Set a timer for ten minutes, please.",
    "What time is it in Tokyo right now?",
    "Why is the sky blue during the day?",
    "Give me a short recipe for pancakes.",
    "Who wrote the play Romeo and Juliet?",
    "How many legs does a spider have?",
    "What is the capital city of Australia?",
    "Remind me to call my sister tomorrow morning.",
    "How do I make a good cup of coffee?",
    "What should I cook for dinner tonight?",
    "Explain how a rainbow forms after the rain.",
    "Is it going to snow this weekend in the mountains?",
    "Tell me a joke about computers and cats.",
    "What is the difference between a virus and a bacterium?",
    "I would like to plan a trip to the coast next summer. Which towns are worth a visit, and where can we stay?",
    "My phone keeps losing its battery charge by the middle of the afternoon, even though I barely use it. "
    "What could be causing that, and how can I fix it?",
)
ESPEAK_VOICES = (("en-us", 165), ("en-gb", 160), ("en-us+f3", 170), ("en-us+m7", 150))
PIPER_VOICE = "piper-en_US-joe-medium"
LEAD_S, TAIL_S = 0.2, 0.5  # silence the VAD hands over around the speech (pre-roll, hangover)
NOISE_DBFS = -65.0  # a quiet microphone's floor


@dataclass
class Row:
    clip: int
    text: str
    voice: str
    audio_s: float
    window: str  # "30 s" or "floor N s"
    hypothesis: str
    errors: int
    words: int
    compute_s: float
    window_s: float
    window_retry: str


def _to_16k(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    return np.asarray(soxr.resample(audio, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else audio, dtype=np.float32)


def espeak(text: str, voice: str, wpm: int, tmp: Path) -> npt.NDArray[np.float32]:
    wav = tmp / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return _to_16k(pcm.astype(np.float32) / 32768.0, rate)


def piper_speaker(onnx: Path) -> tuple[object, int]:
    from piper import PiperVoice

    voice = PiperVoice.load(str(onnx))
    return voice, int(voice.config.sample_rate)


def piper(voice: object, rate: int, text: str) -> npt.NDArray[np.float32]:
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text)]  # type: ignore[attr-defined]
    return _to_16k(np.concatenate(chunks).astype(np.float32), rate)


def as_utterance(speech: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Speech as the VAD hands it over: a little silence around it, on a quiet noise floor."""
    lead, tail = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32), np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)
    audio = np.concatenate([lead, speech, tail])
    noise = rng.standard_normal(audio.size).astype(np.float32) * np.float32(10 ** (NOISE_DBFS / 20))
    return np.clip(audio + noise, -1.0, 1.0)


def corpus(limit: int) -> list[tuple[str, str, npt.NDArray[np.float32]]]:
    from voicecli.testmodels import realweights

    rng = np.random.default_rng(12)
    texts = QUESTIONS[:limit] if limit else QUESTIONS
    voice, rate = piper_speaker(realweights.fetch(PIPER_VOICE))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in texts:
            for name, wpm in ESPEAK_VOICES:
                out.append((text, f"espeak {name}", as_utterance(espeak(text, name, wpm, Path(tmp)), rng)))
            out.append((text, "piper joe", as_utterance(piper(voice, rate, text), rng)))
    return out


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny.en", "base"), default="tiny.en")
    parser.add_argument("--floors", default="10", help="short-window floors in seconds, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    from voicecli.testmodels import realweights

    model_dir = realweights.fetch(f"whisper-{args.model}")
    model = WhisperModel(str(model_dir), device="cpu", compute_type=args.compute_type, cpu_threads=args.threads)
    stt._worker_state["model"] = model  # the worker's own code path, in this process
    windows = {"30 s": 0.0, **{f"floor {float(f):g} s": float(f) for f in args.floors.split(",")}}
    options = {
        name: stt._Options(beam_size=args.beam_size, language="en", initial_prompt="", window_floor_s=floor)
        for name, floor in windows.items()
    }

    print("synthesising the corpus ...", file=sys.stderr)
    clips = corpus(args.limit)
    for opts in options.values():  # warm-up, off the clock
        stt._worker_transcribe(clips[0][2], opts)

    rows: list[Row] = []
    names = list(options)
    started = time.monotonic()
    for i, (text, voice, audio) in enumerate(clips):
        order = names if i % 2 == 0 else names[::-1]  # interleaved: no window always runs first
        for name in order:
            result = stt._worker_transcribe(audio, options[name])
            errors, words = word_errors(text, result.text)
            rows.append(
                Row(
                    clip=i,
                    text=text,
                    voice=voice,
                    audio_s=len(audio) / SAMPLE_RATE,
                    window=name,
                    hypothesis=result.text,
                    errors=errors,
                    words=words,
                    compute_s=result.compute_s,
                    window_s=result.window_s,
                    window_retry=result.window_retry,
                )
            )
        if (i + 1) % 10 == 0 or i + 1 == len(clips):
            print(f"{i + 1}/{len(clips)} utterances", file=sys.stderr)

    audio_s = [len(a) / SAMPLE_RATE for _, _, a in clips]
    print(f"model whisper-{args.model} ({args.compute_type}, {args.threads} threads, beam {args.beam_size})")
    print(f"CPU: {cpu_name()}")
    voices = sorted({v for _, v, _ in clips})
    print(
        f"corpus: {len(clips)} utterances ({len(clips) // len(voices)} questions x {len(voices)} voices: "
        f"{', '.join(voices)}), audio {min(audio_s):.1f}-{max(audio_s):.1f} s, p50 {statistics.median(audio_s):.1f} s; "
        f"{time.monotonic() - started:.0f} s"
    )
    print()
    print(f"{'window':<14}{'WER':>8}{'p50 ms':>9}{'p95 ms':>9}{'mean window':>13}{'retried':>9}")
    for name in names:
        mine = [r for r in rows if r.window == name]
        times = [r.compute_s * 1000 for r in mine]
        retried = sum(1 for r in mine if r.window_retry)
        print(
            f"{name:<14}{100 * corpus_wer((r.text, r.hypothesis) for r in mine):7.1f}%"
            f"{pct(times, 50):9.0f}{pct(times, 95):9.0f}{statistics.mean(r.window_s for r in mine):12.1f}s"
            f"{retried:9d}"
        )
    print()
    print("WER by voice:  " + "  ".join(f"{v}" for v in voices))
    for name in names:
        cells = []
        for v in voices:
            mine = [r for r in rows if r.window == name and r.voice == v]
            cells.append(f"{100 * corpus_wer((r.text, r.hypothesis) for r in mine):.1f}%")
        print(f"  {name:<12}" + "  ".join(cells))
    by_clip: dict[int, dict[str, Row]] = {}
    for r in rows:
        by_clip.setdefault(r.clip, {})[r.window] = r
    differing = [
        c
        for c in by_clip.values()
        if len({r.errors for r in c.values()}) > 1 or any(r.window_retry for r in c.values())
    ]
    if differing:
        print()
        print("utterances where the windows disagree, or the guard re-ran one (word errors, text):")
        for c in differing:
            first = c[names[0]]
            print(f"  [{first.voice}] {first.text!r}")
            for name in names:
                r = c[name]
                retry = f"  (re-run on 30 s: {r.window_retry})" if r.window_retry else ""
                print(f"    {name:<12}{r.errors:3d}  {r.hypothesis!r}{retry}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
