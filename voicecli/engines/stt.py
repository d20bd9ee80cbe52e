"""faster-whisper STT in a process pool: loaded once per worker, warmed up, crash-tolerant.

Why a process pool and not a thread: ctranslate2 holds the GIL-free C++ compute, but a hung or crashed
decoder must not take the assistant down with it, and a worker can be killed and replaced. Workers are
started with "spawn" (never fork: llama.cpp / onnxruntime threads may already exist in the parent).

Failure policy: a worker that dies mid-request (BrokenProcessPool) is replaced by a fresh pool and the
utterance retried once; a request that outlives `timeout_s` kills the pool (it is presumably stuck) and
raises EngineError. The caller never waits forever.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.format import SAMPLE_RATE
from voicecli.engines.base import Transcript
from voicecli.errors import EngineError, ModelError

DEFAULT_PULL_NAME = "whisper-base.en"
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
# Whisper's own "this window was not speech" rule (no_speech_threshold / log_prob_threshold).
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
# A known hallucination is dropped on weaker evidence than arbitrary text.
HALLUCINATION_NO_SPEECH_PROB = 0.3
HALLUCINATION_LOGPROB = -0.7
# One fallback step only: every extra temperature re-runs the decoder (Whisper's default has six).
TEMPERATURES = (0.0, 0.4)
WARMUP_S = 0.5

# What Whisper says over silence, fans and keyboards: subtitle credits and video sign-offs from its
# training data. Compared after normalize().
HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thank you very much",
        "thank you so much",
        "thanks",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "thanks for listening",
        "thank you for listening",
        "please subscribe",
        "like and subscribe",
        "subscribe to my channel",
        "see you next time",
        "see you in the next video",
        "bye",
        "bye bye",
        "goodbye",
        "so",
        "okay",
        "oh",
        "hmm",
        "um",
        "uh",
        "music",
        "applause",
        "silence",
    }
)
HALLUCINATION_PREFIXES = (
    "subtitles by",
    "subtitled by",
    "captions by",
    "captioning by",
    "transcribed by",
    "transcription by",
    "translated by",
    "amara org",
    "www ",
)


def normalize(text: str) -> str:
    """Lowercase words only: punctuation and symbols become spaces, whitespace collapses."""
    kept = "".join(ch if unicodedata.category(ch)[0] in "LN" else " " for ch in text.lower())
    return " ".join(kept.split())


def is_hallucination(text: str) -> bool:
    words = normalize(text)
    return words in HALLUCINATIONS or words.startswith(HALLUCINATION_PREFIXES)


def classify(text: str, no_speech_prob: float, avg_logprob: float) -> bool:
    """True when `text` should be treated as something the user said.

    False for empty or punctuation-only text; for anything Whisper itself would call silence
    (no_speech_prob > 0.6 and avg_logprob < -1); and for the well-known silence hallucinations
    ("Thank you.", "you", subtitle credits...) when either number leans towards non-speech. A user who
    really says "thank you" is heard clearly: low no_speech_prob and a confident decode.
    """
    if not normalize(text):
        return False
    if no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB:
        return False
    if is_hallucination(text):
        return no_speech_prob <= HALLUCINATION_NO_SPEECH_PROB and avg_logprob >= HALLUCINATION_LOGPROB
    return True


# ---------------------------------------------------------------------------------------------------
# Worker side (runs in the pool's processes).


class _LoadFailed(Exception):
    """Model load failure inside a worker; args survive pickling (ModelError's hint would not)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message, hint)


@dataclass(frozen=True)
class _Options:
    beam_size: int
    language: str
    initial_prompt: str


@dataclass(frozen=True)
class _Result:
    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    started_at: float  # time.monotonic() in the worker (same clock as the parent on Linux/macOS)
    compute_s: float


# Per-process state set by the pool initializer: the model (or why it failed to load).
_worker_state: dict[str, Any] = {}


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (even after kill -9), so no worker is ever orphaned."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def _init_worker(model_dir: str, compute_type: str, threads: int, hint: str, parent_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        from faster_whisper import WhisperModel

        _worker_state["model"] = WhisperModel(
            model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1
        )
    except Exception as exc:  # reported by the first task: an initializer error would just break the pool
        bin_path = Path(model_dir) / "model.bin"
        _worker_state["error"] = _LoadFailed(f"cannot load STT model {bin_path}: {exc}", hint)


def _worker_transcribe(audio: npt.NDArray[np.float32], options: _Options) -> _Result:
    started_at = time.monotonic()
    if "error" in _worker_state:
        raise _worker_state["error"]
    model = _worker_state["model"]
    segments, info = model.transcribe(
        audio,
        language=options.language or None,
        beam_size=options.beam_size,
        best_of=1,
        temperature=list(TEMPERATURES),
        without_timestamps=True,
        condition_on_previous_text=False,
        initial_prompt=options.initial_prompt or None,
        vad_filter=False,  # the pipeline's own VAD already cut the utterance
        word_timestamps=False,
    )
    texts, no_speech, logprob_sum, n_tokens = [], 1.0, 0.0, 0
    for seg in segments:
        texts.append(seg.text)
        no_speech = min(no_speech, seg.no_speech_prob)  # speech if any window is confidently speech
        weight = max(1, len(seg.tokens))
        logprob_sum += seg.avg_logprob * weight
        n_tokens += weight
    # No segment at all: faster-whisper dropped every window as silence (its no_speech rule).
    avg_logprob = logprob_sum / n_tokens if n_tokens else 0.0
    return _Result(
        text=" ".join(t.strip() for t in texts).strip(),
        language=str(info.language),
        no_speech_prob=float(no_speech),
        avg_logprob=float(avg_logprob),
        started_at=started_at,
        compute_s=time.monotonic() - started_at,
    )


# ---------------------------------------------------------------------------------------------------
# Parent side.


class WhisperSTT:
    """SpeechToText with faster-whisper; `model` is a local model directory."""

    def __init__(
        self,
        model: str | Path,
        *,
        compute_type: str = "int8",
        threads: int = 2,
        beam_size: int = 1,
        language: str = "en",
        initial_prompt: str = "",
        workers: int = 1,
        timeout_s: float = 30.0,
        load_timeout_s: float = 120.0,
        pull_name: str = "",
    ) -> None:
        if workers < 1 or threads < 1 or beam_size < 1:
            raise ValueError("workers, threads and beam_size must be >= 1")
        self.model_dir = Path(model).expanduser()
        self.compute_type = compute_type
        self.threads = threads
        self.workers = workers
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self._options = _Options(beam_size=beam_size, language=language, initial_prompt=initial_prompt)
        self._hint = (
            f"run `voicecli models pull {pull_name or DEFAULT_PULL_NAME}` (or `voicecli models verify`), "
            "or check the path"
        )
        self._pool: ProcessPoolExecutor | None = None
        self._restart_lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------------

    def check_files(self) -> None:
        """Cheap checks before any worker starts: a clear error instead of a hub download or crash."""
        if not self.model_dir.is_dir():
            raise ModelError(f"STT model directory not found: {self.model_dir}", hint=self._hint)
        for name in REQUIRED_FILES:
            path = self.model_dir / name
            if not path.is_file() or path.stat().st_size == 0:
                raise ModelError(f"STT model file missing or empty: {path}", hint=self._hint)

    async def start(self) -> None:
        """Start the workers, load the model in each and run one warm-up inference per worker."""
        self.check_files()
        self._closed = False
        self._pool = self._new_pool()
        silence = np.zeros(int(WARMUP_S * SAMPLE_RATE), dtype=np.float32)
        # One warm-up per worker; with several workers one may take two, which only costs a little.
        warmups = [self._call(silence, self.load_timeout_s) for _ in range(self.workers)]
        results = await asyncio.gather(*warmups, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                await self.close()
                if isinstance(result, BrokenProcessPool):
                    raise ModelError(
                        f"the STT worker died while loading {self.model_dir / 'model.bin'}", hint=self._hint
                    ) from result
                raise result

    async def transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        """audio: mono float32 in [-1, 1] at 16 kHz. Retries once if the worker died."""
        if self._pool is None:
            raise EngineError("STT is not started", hint="call start() first")
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return Transcript(text="", is_speech=False)
        submitted = time.monotonic()
        retried = False
        pool = self._pool
        try:
            result = await self._call(audio, self.timeout_s)
        except BrokenProcessPool:
            await self._replace_pool(pool)
            retried = True
            try:  # the fresh worker loads the model first
                result = await self._call(audio, self.timeout_s + self.load_timeout_s)
            except BrokenProcessPool as exc:
                await self._replace_pool(self._pool)
                raise EngineError(
                    "the STT worker died twice on this utterance", hint="check memory and the model files"
                ) from exc
        return Transcript(
            text=result.text,
            is_speech=classify(result.text, result.no_speech_prob, result.avg_logprob),
            language=result.language,
            no_speech_prob=result.no_speech_prob,
            avg_logprob=result.avg_logprob,
            audio_s=len(audio) / SAMPLE_RATE,
            queue_wait_s=max(0.0, result.started_at - submitted),
            compute_s=result.compute_s,
            retried=retried,
        )

    async def close(self) -> None:
        """Stop the workers (idempotent; never hangs)."""
        await asyncio.to_thread(self.close_now)

    def close_now(self) -> None:
        """Synchronous close, also safe from a signal handler or atexit."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            _stop_pool(pool)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for tests and diagnostics)."""
        return list(_pool_processes(self._pool)) if self._pool is not None else []

    # -- internals ------------------------------------------------------------------------------------

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(self.model_dir), self.compute_type, self.threads, self._hint, os.getpid()),
        )

    async def _replace_pool(self, broken: ProcessPoolExecutor | None) -> None:
        async with self._restart_lock:
            if self._closed:
                raise EngineError("STT was closed", hint="start it again")
            if self._pool is broken:  # a concurrent request may have replaced it already
                self._pool = self._new_pool()
                if broken is not None:
                    await asyncio.to_thread(_stop_pool, broken)

    async def _call(self, audio: npt.NDArray[np.float32], timeout_s: float) -> _Result:
        """The one place a blocking whisper call is handed to the executor."""
        pool = self._pool
        if pool is None:
            raise EngineError("STT is closed", hint="start it again")
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(pool, _worker_transcribe, audio, self._options), timeout_s
            )
        except TimeoutError:
            # A stuck worker cannot be interrupted: replace the pool so the next utterance works.
            await self._replace_pool(pool)
            raise EngineError(
                f"STT did not answer within {timeout_s:.0f} s", hint="try a smaller model or more threads"
            ) from None
        except _LoadFailed as exc:
            message, hint = exc.args
            raise ModelError(message, hint=hint) from None
        except (BrokenProcessPool, asyncio.CancelledError):
            raise
        except Exception as exc:  # an error inside faster-whisper, re-raised from the worker
            raise EngineError(f"STT failed: {exc}", hint="check the audio and the model files") from exc


def _pool_processes(pool: ProcessPoolExecutor) -> dict[int, multiprocessing.Process]:
    # The executor keeps its workers in a private dict; there is no public accessor.
    processes: dict[int, multiprocessing.Process] | None = getattr(pool, "_processes", None)
    return dict(processes or {})


def _stop_pool(pool: ProcessPoolExecutor, grace_s: float = 2.0) -> None:
    """Shut a pool down without waiting on a busy or stuck worker, and reap every process."""
    processes = list(_pool_processes(pool).values())
    # shutdown() takes the executor's internal lock; from a signal handler that lock may be held by the
    # very frame the signal interrupted, so it runs on a helper thread and never blocks us.
    threading.Thread(target=pool.shutdown, kwargs={"wait": False, "cancel_futures": True}, daemon=True).start()
    deadline = time.monotonic() + grace_s
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in processes:
        if proc.is_alive():
            proc.kill()
            proc.join(grace_s)


__all__ = ["WhisperSTT", "classify", "is_hallucination", "normalize"]
