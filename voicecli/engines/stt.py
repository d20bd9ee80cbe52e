"""faster-whisper STT in a process pool: loaded once per worker, warmed up, crash-tolerant.

Why a process pool and not a thread: ctranslate2 holds the GIL-free C++ compute, but a hung or crashed
decoder must not take the assistant down with it, and a worker can be killed and replaced. Workers are
started with "spawn" (never fork: llama.cpp / onnxruntime threads may already exist in the parent).

Failure policy: a worker that dies mid-request (BrokenProcessPool) is replaced by a fresh pool and the
utterance retried once; a request that outlives `timeout_s` kills the pool (it is presumably stuck) and
raises EngineError. The caller never waits forever.

Short window: faster-whisper pads every utterance to Whisper's 30 s window, so the encoder always pays for 30 s.
CTranslate2 accepts shorter features, so an utterance is encoded in a window of max(audio + 1 s,
`window_floor_s`) and decoded with the same prompt, options and temperature fallback faster-whisper would use
(scripts/stt_window_wer.py, 2 cores: 3.5x faster with real tiny.en at the same WER, 4x with base at a WER about
one point higher, 4.3 % against 3.2 %, mostly on one espeak voice). A model that loops on the
short window (too compressible, a repeated phrase, or more tokens than any speech of that length) is re-run
on the full 30 s window; so is audio that does not fit. Transcript.window_s says which window produced the text.

Queueing: the pool only ever holds as many requests as it has workers; the rest wait in the parent, where
cancelling them (a speculative transcription the user talked over) means they never run at all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import unicodedata
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.format import SAMPLE_RATE
from voicecli.engines.base import Transcript
from voicecli.engines.priority import COMPUTE_NICE, lower_this_thread
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
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent thread ends

# Whisper's window and the short one (see the module docstring).
FULL_WINDOW_S = 30.0
WINDOW_MARGIN_S = 1.0  # silence after the speech inside the window
DEFAULT_WINDOW_FLOOR_S = 7.0  # see config.SttConfig.window_floor_s
# The repetition guard: Whisper's own compression-ratio limit, a phrase said over and over, and a token rate
# no speech reaches (the short-window decode is also capped there, so a loop stops early). Fast English is
# ~6 Whisper tokens/s; 20 leaves room for digits, spelling, other scripts and byte-level test tokenizers.
COMPRESSION_RATIO_MAX = 2.4
TOKENS_PER_S_MAX = 20.0
TOKENS_SLACK = 16
MAX_DECODER_LENGTH = 448  # Whisper's decoder positions (prompt included)

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


def sentence_case(text: str) -> str:
    """`text` with a lowercase first letter upper-cased. Whisper starts a transcript in lowercase now and then
    (55 of 892 partial transcripts in one benchmark) and capitalises the same words a moment later: the prompt
    prefilled with the partial words then differed from the question's at its first token, and the pause
    evaluated the whole question again (27 prompt tokens instead of ~10)."""
    stripped = text.lstrip()
    return stripped[:1].upper() + stripped[1:] if stripped[:1].islower() else stripped


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


def window_for(audio_s: float, floor_s: float) -> float:
    """The encoder window for an utterance of `audio_s`: max(audio + 1 s, floor) in whole encoder positions
    (20 ms), or Whisper's full 30 s when the floor is 0 (short windows off) or the utterance does not fit."""
    if floor_s <= 0:
        return FULL_WINDOW_S
    window = max(audio_s + WINDOW_MARGIN_S, floor_s)
    if window >= FULL_WINDOW_S:
        return FULL_WINDOW_S
    return math.ceil(round(window * 50, 6)) / 50


def token_budget(audio_s: float) -> int:
    """More text tokens than this for `audio_s` of speech is a decoder loop, not speech."""
    return int(TOKENS_SLACK + TOKENS_PER_S_MAX * audio_s)


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 bytes over zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeated_ngram(words: list[str]) -> bool:
    """True when some run of words repeats back to back as a loop does: a phrase of n words said k times in
    a row with n * k >= 8 and k >= 3, or k >= 2 for phrases of 4 words or more ("no no no" stays speech)."""
    total = len(words)
    for n in range(1, total // 2 + 1):
        min_copies = 2 if n >= 4 else max(3, math.ceil(8 / n))
        if n * min_copies > total:
            continue
        for start in range(total - n * min_copies + 1):
            phrase = words[start : start + n]
            copies = 1
            while words[start + copies * n : start + (copies + 1) * n] == phrase:
                copies += 1
                if copies >= min_copies:
                    return True
    return False


def first_of_loop(text: str) -> str | None:
    """The first copy when `text` is one phrase of 3 words or more said over and over from its first word (the
    last copy may be cut short): the loop a short window sends a small model into after a whole utterance (real
    tiny.en, 7-10 s windows: "Give me a short recipe for pancakes Give me a short recipe for pancakes ..." up to
    the token cap). None for anything else: a loop that starts mid-way is left to the 30 s window."""
    raw = [w for w in text.split() if normalize(w)]
    words = [normalize(w) for w in raw]
    for n in range(1, len(words) // 2 + 1):  # the shortest period: "the the the ..." is no phrase
        if all(words[i] == words[i % n] for i in range(n, len(words))):
            return " ".join(raw[:n]) if n >= 3 else None
    return None


def repetition(text: str, n_tokens: int, audio_s: float) -> str:
    """Why a decode of `audio_s` of audio looks like a decoder loop: "compression", "tokens" or "ngram";
    "" when it does not. `n_tokens` counts the text tokens the decoder produced."""
    if compression_ratio(text) > COMPRESSION_RATIO_MAX:
        return "compression"
    if n_tokens >= token_budget(audio_s):
        return "tokens"
    if repeated_ngram(normalize(text).split()):
        return "ngram"
    return ""


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
    window_floor_s: float = DEFAULT_WINDOW_FLOOR_S  # 0: always the full 30 s window


@dataclass(frozen=True)
class _Result:
    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    started_at: float  # time.monotonic() in the worker (same clock as the parent on Linux/macOS)
    compute_s: float
    window_s: float = FULL_WINDOW_S
    window_retry: str = ""  # why a short-window decode was discarded and re-run on 30 s
    loop_trimmed: str = ""  # why a short-window decode was cut to its first copy (`first_of_loop`)


# Per-process state set by the pool initializer: the model (or why it failed to load).
_worker_state: dict[str, Any] = {}


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (even after kill -9), so no worker is ever orphaned."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """A worker frozen by WhisperSTT.freeze runs no watcher thread: on Linux the kernel kills it when the parent
    goes (PR_SET_PDEATHSIG reaches a stopped process); the watcher covers the other systems."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # gone before the signal was armed
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _init_worker(model_dir: str, compute_type: str, threads: int, hint: str, parent_pid: int, nice: int) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_this_thread(nice)  # the main thread of the worker; CTranslate2's threads inherit it
    _die_with_parent(parent_pid)
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
    audio_s = len(audio) / SAMPLE_RATE
    window_s = window_for(audio_s, options.window_floor_s)
    reason = ""
    if window_s < FULL_WINDOW_S:
        short = _transcribe_window(model, audio, window_s, options)
        if isinstance(short, _Result):
            return replace(short, started_at=started_at, compute_s=time.monotonic() - started_at)
        reason = short
    full = _transcribe_full(model, audio, options)
    return replace(full, started_at=started_at, compute_s=time.monotonic() - started_at, window_retry=reason)


def _transcribe_full(model: Any, audio: npt.NDArray[np.float32], options: _Options) -> _Result:
    """faster-whisper's own transcribe(): the 30 s window."""
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
        started_at=0.0,
        compute_s=0.0,
    )


def _tokenizer(model: Any, language: str) -> Any:
    """faster-whisper's Tokenizer for this language (cached per worker)."""
    cache: dict[str, Any] = _worker_state.setdefault("tokenizers", {})
    if language not in cache:
        from faster_whisper.tokenizer import Tokenizer

        cache[language] = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
    return cache[language]


def _window_features(model: Any, audio: npt.NDArray[np.float32], window_s: float) -> npt.NDArray[np.float32]:
    """The log-mel features faster-whisper computes for this audio, padded as it pads its 30 s window (with
    zero features), only to `window_s`."""
    from faster_whisper.audio import pad_or_trim

    features = model.feature_extractor(audio)[..., :-1]
    frames = round(window_s * SAMPLE_RATE) // model.feature_extractor.hop_length
    return np.asarray(pad_or_trim(features, frames), dtype=np.float32)


def _transcribe_window(model: Any, audio: npt.NDArray[np.float32], window_s: float, options: _Options) -> _Result | str:
    """One utterance on a `window_s` encoder window, decoded exactly as faster-whisper's transcribe() would
    decode its first 30 s window (prompt, suppressed tokens, temperature fallback, silence rule).
    Returns the repetition guard's reason instead when a decode looks like a loop."""
    from faster_whisper.transcribe import get_suppressed_tokens

    audio_s = len(audio) / SAMPLE_RATE
    encoder_output = model.encode(_window_features(model, audio, window_s))

    if not model.model.is_multilingual:
        language = "en"
    elif options.language:
        language = options.language
    else:
        language = model.model.detect_language(encoder_output)[0][0][0][2:-2]
    tokenizer = _tokenizer(model, language)
    previous = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
    prompt = model.get_prompt(tokenizer, previous, without_timestamps=True)
    # CTranslate2 stops Whisper at min(max_length - prompt + 1, max_length // 2) tokens.
    budget = token_budget(audio_s)
    max_length = min(MAX_DECODER_LENGTH, max(len(prompt) + budget, 2 * budget))
    suppress = list(get_suppressed_tokens(tokenizer, [-1]))

    decodes: list[tuple[str, float, float, str]] = []  # (text, avg_logprob, no_speech_prob, loop_trimmed)
    for temperature in TEMPERATURES:
        if temperature > 0:
            sampling: dict[str, Any] = {
                "beam_size": 1,
                "num_hypotheses": 1,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            sampling = {"beam_size": options.beam_size, "patience": 1.0}
        result = model.model.generate(
            encoder_output,
            [prompt],
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
            max_initial_timestamp_index=50,
            **sampling,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        text = tokenizer.decode(tokens).strip()
        trimmed = ""
        reason = repetition(text, len(tokens), audio_s)
        if reason:
            # A whole utterance said again and again: its first copy is the transcript (the 30 s window would
            # take ~4x as long to say the same).
            first = first_of_loop(text)
            if first is None or repetition(first, len(tokenizer.encode(" " + first)), audio_s):
                return reason
            text, trimmed = first, reason
        no_speech = float(result.no_speech_prob)
        decodes.append((text, avg_logprob, no_speech, trimmed))
        # faster-whisper's fallback rule (its compression-ratio part is the guard above).
        if avg_logprob >= LOW_LOGPROB or no_speech > NO_SPEECH_PROB:
            break
    else:  # every temperature failed: the most probable decode
        text, avg_logprob, no_speech, trimmed = max(decodes, key=lambda d: d[1])
    if no_speech > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB:
        text = ""  # faster-whisper drops such a window as silence
    return _Result(
        text=text,
        language=language,
        no_speech_prob=no_speech,
        avg_logprob=avg_logprob,
        started_at=0.0,
        compute_s=0.0,
        window_s=window_s,
        loop_trimmed=trimmed,
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
        window_floor_s: float = DEFAULT_WINDOW_FLOOR_S,
        nice: int = COMPUTE_NICE,
    ) -> None:
        """`window_floor_s`: the shortest encoder window (seconds); an utterance is encoded in max(its length
        + 1 s, this), and on Whisper's 30 s when it does not fit. 0 always uses 30 s. `nice`: the workers'
        niceness (engines.priority); 19 for work that must give way to everything else of ours."""
        if workers < 1 or threads < 1 or beam_size < 1:
            raise ValueError("workers, threads and beam_size must be >= 1")
        if not window_floor_s >= 0:
            raise ValueError("window_floor_s must be >= 0 (0 = always the 30 s window)")
        self.model_dir = Path(model).expanduser()
        self.compute_type = compute_type
        self.threads = threads
        self.nice = nice
        self.workers = workers
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self._options = _Options(
            beam_size=beam_size, language=language, initial_prompt=initial_prompt, window_floor_s=window_floor_s
        )
        self._hint = (
            f"run `voicecli models pull {pull_name or DEFAULT_PULL_NAME}` (or `voicecli models verify`), "
            "or check the path"
        )
        self._pool: ProcessPoolExecutor | None = None
        self._restart_lock = asyncio.Lock()
        self._closed = False
        # Requests inside the pool (at most one per worker); the others wait in the parent, cancellable.
        self._busy = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdogs: set[asyncio.Future[None]] = set()
        self.frozen = False  # the workers are stopped (freeze)

    @property
    def window_floor_s(self) -> float:
        return self._options.window_floor_s

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
        self._loop = asyncio.get_running_loop()
        self._pool = self._new_pool()
        self._reset_slots()
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
            text=sentence_case(result.text),
            is_speech=classify(result.text, result.no_speech_prob, result.avg_logprob),
            language=result.language,
            no_speech_prob=result.no_speech_prob,
            avg_logprob=result.avg_logprob,
            audio_s=len(audio) / SAMPLE_RATE,
            queue_wait_s=max(0.0, result.started_at - submitted),
            compute_s=result.compute_s,
            retried=retried,
            window_s=result.window_s,
            window_retry=result.window_retry,
            loop_trimmed=result.loop_trimmed,
        )

    async def close(self) -> None:
        """Stop the workers (idempotent; never hangs)."""
        await asyncio.to_thread(self.close_now)

    def close_now(self) -> None:
        """Synchronous close, also safe from a signal handler or atexit."""
        self._closed = True
        pool, self._pool = self._pool, None
        if self._loop is not None:  # requests waiting for a worker fail now (thread- and signal-safe)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits any more
                self._loop.call_soon_threadsafe(self._reset_slots)
        if pool is not None:
            _stop_pool(pool)

    @property
    def idle(self) -> bool:
        """No transcription runs or waits: one asked now starts at once."""
        return self._pool is not None and self._busy == 0 and not self._slot_waiters

    @property
    def keeps_up(self) -> bool:
        """A transcription runs at its usual pace now: the workers' niceness is the compute one, or no other
        program is busy (a niceness-19 worker next to one gets a sliver of a core)."""
        from voicecli.engines.threads import spare_cores, usable_cores

        return self.nice <= COMPUTE_NICE or spare_cores() >= min(2, usable_cores())

    def freeze(self, frozen: bool) -> None:
        """Stop (SIGSTOP) or continue (SIGCONT) the workers where they are. For work that may be thrown away (the
        user's partial words): niceness alone still lets it take slices of a core, and two llama.cpp threads
        that meet at every op wait for each other whenever one loses its core (a 150 ms prefill took 2 s next
        to a niceness-19 partial). Time spent frozen does not count against a request's timeout (`_until`);
        close() continues the workers first."""
        sig = getattr(signal, "SIGSTOP" if frozen else "SIGCONT", None)
        if sig is None:  # not POSIX: nothing to freeze with
            return
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        self.frozen = frozen

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for tests and diagnostics)."""
        return list(_pool_processes(self._pool)) if self._pool is not None else []

    # -- internals ------------------------------------------------------------------------------------

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(self.model_dir), self.compute_type, self.threads, self._hint, os.getpid(), self.nice),
        )

    async def _replace_pool(self, broken: ProcessPoolExecutor | None) -> None:
        async with self._restart_lock:
            if self._closed:
                raise EngineError("STT was closed", hint="start it again")
            if self._pool is broken:  # a concurrent request may have replaced it already
                self._pool = self._new_pool()
                self.frozen = False
                self._reset_slots()  # whatever ran in the broken pool is gone with it
                if broken is not None:
                    await asyncio.to_thread(_stop_pool, broken)

    async def _acquire_slot(self) -> None:
        """Wait until a worker is free. A request cancelled here was never submitted, so it never runs."""
        while True:
            if self._pool is None:
                raise EngineError("STT is closed", hint="start it again")
            if self._busy < self.workers:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
        self._busy += 1

    def _wake_slot_waiters(self) -> None:
        # Everyone re-checks in FIFO order; a waiter cancelled meanwhile just drops out.
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _release_slot(self, pool: ProcessPoolExecutor) -> None:
        if pool is self._pool:  # slots of a replaced pool were reset with it
            self._busy = max(0, self._busy - 1)
            self._wake_slot_waiters()

    def _reset_slots(self) -> None:
        self._busy = 0
        self._wake_slot_waiters()

    async def _expire(
        self, job: concurrent.futures.Future[_Result], pool: ProcessPoolExecutor, deadline: float
    ) -> None:
        """A job nobody waits for any more still frees its worker by its deadline, or the pool is replaced."""
        try:
            await self._until(job, pool, deadline)
        except TimeoutError:
            with contextlib.suppress(EngineError):  # closed meanwhile
                await self._replace_pool(pool)
        except Exception:  # its result or error interests no one
            return

    async def _until(
        self, job: concurrent.futures.Future[_Result], pool: ProcessPoolExecutor, deadline: float
    ) -> _Result:
        """The job's result, or TimeoutError at `deadline` (the loop's clock). A stopped worker is not a stuck
        one: while the pool is frozen (`freeze`) the deadline moves on."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(job)), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                if not (self.frozen and pool is self._pool):
                    raise
                deadline = loop.time() + self.timeout_s

    async def _call(self, audio: npt.NDArray[np.float32], timeout_s: float) -> _Result:
        """The one place a blocking whisper call is handed to the executor."""
        await self._acquire_slot()
        pool = self._pool
        assert pool is not None  # checked by _acquire_slot, with no await since
        loop = asyncio.get_running_loop()
        try:
            job = pool.submit(_worker_transcribe, audio, self._options)
        except BaseException:
            self._release_slot(pool)
            raise

        def finished(_: concurrent.futures.Future[_Result]) -> None:
            # The slot frees when the worker is done, not when the caller stops waiting: a cancelled request
            # that already runs keeps its worker busy until it ends.
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nothing waits any more
                loop.call_soon_threadsafe(self._release_slot, pool)

        job.add_done_callback(finished)
        deadline = loop.time() + timeout_s
        try:
            return await self._until(job, pool, deadline)
        except TimeoutError:
            # A stuck worker cannot be interrupted: replace the pool so the next utterance works.
            await self._replace_pool(pool)
            raise EngineError(
                f"STT did not answer within {timeout_s:.0f} s", hint="try a smaller model or more threads"
            ) from None
        except _LoadFailed as exc:
            message, hint = exc.args
            raise ModelError(message, hint=hint) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # close() cancelled the job, not our caller: an engine error like any other
                raise EngineError("STT was closed", hint="start it again") from None
            job.cancel()  # one not started yet never runs
            if not job.done():  # the caller gave up, the worker goes on: its timeout still holds
                watchdog = asyncio.ensure_future(self._expire(job, pool, deadline))
                self._watchdogs.add(watchdog)
                watchdog.add_done_callback(self._watchdogs.discard)
            raise
        except BrokenProcessPool:
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
    for proc in processes:  # a frozen worker (WhisperSTT.freeze) could not see the shutdown
        if proc.pid is not None and hasattr(signal, "SIGCONT"):
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGCONT)
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


__all__ = ["WhisperSTT", "classify", "is_hallucination", "normalize", "repetition", "window_for"]
