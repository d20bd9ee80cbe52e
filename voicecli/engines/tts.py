"""Piper TTS adapter: one clause in, int16 at the output device rate out.

The voice loads once, with a bounded onnxruntime thread count so it does not fight whisper and llama.cpp
for cores, and every blocking call runs in the adapter's own single worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt
import soxr

from voicecli.audio.format import float32_to_int16
from voicecli.engines.base import Speech
from voicecli.errors import ConfigError, EngineError, ModelError
from voicecli.openers import STANDALONE_OPENERS

if TYPE_CHECKING:
    from piper import PiperVoice

T = TypeVar("T")

# Trimming: samples quieter than this (relative to the clause's peak) count as silence at the edges,
# and this much of it is kept so soft onsets and word endings are not clipped.
TRIM_THRESHOLD_DB = -40.0
TRIM_KEEP_S = 0.015
# Unicode categories that are never spoken: symbols (emoji), format controls (zero-width joiner),
# private use and surrogates. Currency, math signs and digits stay: espeak reads them well.
_UNSPOKEN_CATEGORIES = frozenset({"So", "Sk", "Cf", "Co", "Cs", "Cn"})
_VARIATION_SELECTORS = range(0xFE00, 0xFE10)
# "°" is a symbol (So) and would be dropped: LLMs give temperatures as "12°C (54.7°F)", which came out as
# "twelve C (fifty-four point seven F)".
_DEGREES = re.compile(r"\s*°(?:\s*([CF])\b)?(?=(\w)?)")  # group 2: a word right after it ("45°angle")
_SCALES = {"C": " degrees Celsius", "F": " degrees Fahrenheit", None: " degrees"}


def speakable(text: str) -> str:
    """`text` without emoji and other unspeakable symbols ("°C" read as "degrees Celsius"); "" when no letter or
    digit is left."""
    text = _DEGREES.sub(lambda m: _SCALES[m.group(1)] + (" " if m.group(2) else ""), text)
    kept = "".join(
        ch
        for ch in text
        if unicodedata.category(ch) not in _UNSPOKEN_CATEGORIES and ord(ch) not in _VARIATION_SELECTORS
    )
    if not any(unicodedata.category(ch)[0] in "LN" for ch in kept):
        return ""
    return " ".join(kept.split())


def trim_silence(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    """Cut leading and trailing silence, keeping TRIM_KEEP_S of it on each side."""
    if audio.size == 0:
        return audio
    magnitude = np.abs(audio)
    peak = float(magnitude.max())
    if peak <= 0.0:
        return audio[:0]
    loud = np.flatnonzero(magnitude > peak * 10.0 ** (TRIM_THRESHOLD_DB / 20.0))
    keep = round(TRIM_KEEP_S * rate)
    start = max(0, int(loud[0]) - keep)
    end = min(audio.size, int(loud[-1]) + 1 + keep)
    return audio[start:end]


def _voice_hint(voice: str | Path) -> str:
    text = str(voice)
    if "/" not in text and not text.endswith(".onnx"):
        return f"run `voicecli models pull {text}`"
    return "check the path, or run `voicecli models pull` to fetch the default voice"


class PiperTTS:
    """`voicecli.engines.base.TextToSpeech` with a Piper voice (.onnx + .onnx.json)."""

    def __init__(
        self,
        voice: str | Path,
        *,
        output_rate: int,
        speaker: int = 0,
        speed: float = 1.0,
        threads: int = 1,
    ) -> None:
        if output_rate <= 0:
            raise ConfigError(f"output rate must be positive, got {output_rate}")
        if not speed > 0:
            raise ConfigError(f"tts speed must be positive, got {speed}", hint="set tts.speed, e.g. 1.0")
        if threads < 1:
            raise ConfigError(f"tts threads must be at least 1, got {threads}")
        self.model_path = Path(voice).expanduser()
        self.config_path = Path(f"{self.model_path}.json")
        self.sample_rate = output_rate
        self.speaker = speaker
        self.speed = speed
        self.threads = threads
        self._config = self._read_config(voice)
        self.voice_rate = int(self._config["audio"]["sample_rate"])
        num_speakers = int(self._config["num_speakers"])
        if not 0 <= speaker < num_speakers:
            raise ConfigError(
                f"speaker id {speaker} is out of range: voice {self.model_path.name} has "
                f"{num_speakers} speaker{'s' if num_speakers != 1 else ''} (ids 0..{num_speakers - 1})",
                hint="set tts.speaker to a valid id, or pick a multi-speaker voice",
            )
        self._voice: PiperVoice | None = None
        self._executor: ThreadPoolExecutor | None = None
        # The standalone openers ("Sure"), synthesised at start-up: a reply's first clause is most often one of
        # them, and the speaker then waits for no synthesis (see `start`).
        self._openers: dict[str, npt.NDArray[np.int16]] = {}

    def _read_config(self, voice: str | Path) -> dict[str, Any]:
        if not self.model_path.is_file():
            raise ModelError(f"Piper voice not found: {self.model_path}", hint=_voice_hint(voice))
        if not self.config_path.is_file():
            raise ModelError(
                f"Piper voice config not found: {self.config_path} (it must sit beside the .onnx)",
                hint=_voice_hint(voice),
            )
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
            int(config["audio"]["sample_rate"])
            int(config["num_speakers"])
            dict(config["phoneme_id_map"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"Piper voice config is corrupt: {self.config_path} ({exc.__class__.__name__}: {exc})",
                hint="delete it and run `voicecli models pull` again, or check the file",
            ) from None
        return dict(config)

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """The adapter's one executor call site: every blocking call runs in its single worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        """Load the voice and synthesise the standalone openers (pipeline.chunker speaks "Sure" as a clause of its
        own) once: the first synthesis is the warm-up, and an opener is then spoken from memory. On the target set
        (Piper joe, 2-core AMD EPYC) "Sure" took ~45 ms, and the end-of-turn verdict that runs beside it as long
        again: the speaker waited for both. ~10 clauses of ~0.3 s: ~0.5 s of start-up, ~130 kB."""
        if self._voice is None:
            await self._in_worker(self._load)
            self._openers = {}
            for word in sorted(STANDALONE_OPENERS):
                self._openers[word] = (await self.synthesize(word)).pcm

    def _load(self) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        # Piper keeps the session's priority, above whisper and llama.cpp: the speaker waits on it.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Idle worker threads would otherwise spin and steal CPU from whisper and llama.cpp.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf types
            raise ModelError(
                f"Piper voice is truncated or corrupt: {self.model_path} ({str(exc).strip()[:200]})",
                hint="delete it and run `voicecli models pull` again (or `voicecli models verify`)",
            ) from None
        self._voice = PiperVoice(session=session, config=PiperConfig.from_dict(self._config))

    async def synthesize(self, text: str) -> Speech:
        """One clause in; int16 at `sample_rate` out. Empty pcm when nothing is speakable."""
        clean = speakable(text)
        if not clean:
            return Speech(text=text, pcm=np.zeros(0, np.int16), sample_rate=self.sample_rate)
        if self._voice is None:
            raise EngineError("Piper TTS used before start()", hint="await tts.start() first")
        opener = self._openers.get(clean)
        if opener is not None:
            return Speech(text=text, pcm=opener.copy(), sample_rate=self.sample_rate, extra={"cached": 1.0})
        queued = time.monotonic()
        pcm, started, finished = await self._in_worker(self._synthesize_blocking, clean)
        speech = Speech(
            text=text,
            pcm=pcm,
            sample_rate=self.sample_rate,
            compute_s=finished - started,
            extra={"queue_wait_s": started - queued},
        )
        if speech.duration_s > 0:
            speech.extra["rtf"] = speech.compute_s / speech.duration_s
        return speech

    def _synthesize_blocking(self, text: str) -> tuple[npt.NDArray[np.int16], float, float]:
        from piper.config import SynthesisConfig

        started = time.monotonic()
        assert self._voice is not None
        syn_config = SynthesisConfig(
            speaker_id=self.speaker if int(self._config["num_speakers"]) > 1 else None,
            length_scale=float(self._config.get("inference", {}).get("length_scale", 1.0)) / self.speed,
        )
        try:
            chunks = [chunk.audio_float_array for chunk in self._voice.synthesize(text, syn_config=syn_config)]
        except Exception as exc:
            raise EngineError(
                f"Piper failed on {text[:60]!r}: {exc.__class__.__name__}: {str(exc).strip()[:200]}",
                hint=f"check the voice {self.model_path}",
            ) from exc
        audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
        audio = trim_silence(audio, self.voice_rate)
        if audio.size and self.voice_rate != self.sample_rate:
            audio = soxr.resample(audio, self.voice_rate, self.sample_rate, quality="HQ")
        pcm = float32_to_int16(audio)
        return pcm, started, time.monotonic()

    async def close(self) -> None:
        """Release the voice and the worker thread (idempotent)."""
        executor, self._executor = self._executor, None
        self._voice = None
        self._openers = {}
        if executor is not None:
            # Never waits: a clause still being synthesised finishes in the background and is dropped.
            executor.shutdown(wait=False, cancel_futures=True)
