"""The contracts between the pipeline and the engines.

Each adapter keeps its blocking library call behind exactly one executor call site and
exposes async methods, so nothing CPU-heavy ever runs on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Role = Literal["system", "user", "assistant"]
QUEUE_DELTAS = 8  # LLM -> chunker bound: "small; producer waits" (DESIGN.md stage contracts)


@dataclass(frozen=True)
class Transcript:
    """What STT heard in one utterance.

    `is_speech` is False when the text is empty, punctuation-only, or a well-known silence
    hallucination that the model's own probabilities say was not speech; the pipeline ignores it.
    Times are seconds. `queue_wait_s`: from the request to the worker starting it (waiting behind other
    utterances). `retried`: the worker died and the utterance ran again on a fresh one. `window_s`: the encoder
    window that produced the text (Whisper's 30 s, or a shorter one fitted to the audio); `window_retry`: why a
    short-window decode was discarded and re-run on 30 s ("compression", "tokens", "ngram"), else "";
    `loop_trimmed`: the same for a decode that said the whole utterance over and over and was cut to its first copy.
    """

    text: str
    is_speech: bool
    language: str = ""
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    audio_s: float = 0.0
    queue_wait_s: float = 0.0
    compute_s: float = 0.0
    retried: bool = False
    window_s: float = 30.0
    window_retry: str = ""
    loop_trimmed: str = ""


class SpeechToText(Protocol):
    async def start(self) -> None:
        """Load and warm up the model(s). Raises ModelError with a hint on failure."""

    async def transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        """audio: mono float32 in [-1, 1] at 16 kHz."""

    async def close(self) -> None:
        """Release workers (idempotent; never hangs)."""


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class Sampling:
    """Sampling for small instruct models: a mild repeat penalty and min_p keep a 135M-0.5B model from
    looping or wandering into other scripts, at no cost in speed."""

    temperature: float = 0.6
    top_p: float = 0.9
    min_p: float = 0.1
    repeat_penalty: float = 1.1


@dataclass
class LLMStats:
    """Per-generation numbers. Times are seconds on time.monotonic()."""

    prompt_tokens: int = 0
    # Tokens llama.cpp actually evaluated (the rest came from the reused KV-cache prefix).
    prompt_tokens_evaluated: int = 0
    completion_tokens: int = 0
    started_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    cancelled: bool = False
    error: str | None = None
    # Local models: threads of the prefill / the rest of the reply, runnable threads of other programs when the
    # request was planned (engines.threads), and how often a stall dropped the reply to one thread.
    threads_batch: int = 0
    threads_decode: int = 0
    cpu_busy: int = 0
    stalls: int = 0


class LLMStream(Protocol):
    """Text deltas of one reply, as they are generated."""

    stats: LLMStats

    def __aiter__(self) -> AsyncIterator[str]: ...

    def cancel(self) -> None:
        """Stop generation within a token or two. Safe from any thread, idempotent."""


class DeltaStream:
    """The loop side of an `LLMStream` whose deltas a worker thread hands over through `_queue`: a text
    delta (str), or a final item, the end marker or an exception (raised to the reader). Subclasses own the
    worker side and `cancel`; `_taken` is called for each text delta the reader takes off the queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue_bound: int = 0) -> None:
        self.stats = LLMStats(started_at=time.monotonic())
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue(queue_bound)
        self._stop = False
        self._ended = False

    @property
    def stopped(self) -> bool:
        return self._stop

    def _taken(self) -> None:
        """A text delta left the queue (a hook for flow control)."""

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        while not self._ended:
            item = await self._queue.get()
            if isinstance(item, str):
                self._taken()
                if self._stop:
                    continue  # generated before the stop took effect: never hand it out
                return item
            self._ended = True
            if isinstance(item, BaseException):
                raise item
        raise StopAsyncIteration

    async def text(self) -> str:
        """The whole reply (convenience for tests and the naive baseline)."""
        return "".join([d async for d in self])


class LanguageModel(Protocol):
    async def start(self) -> None:
        """Load and warm up (prefill the system prompt)."""

    def chat(
        self, messages: Sequence[ChatMessage], max_tokens: int = 256, sampling: Sampling | None = None
    ) -> LLMStream:
        """Start streaming a reply to `messages`; `sampling` overrides the model's own for this reply."""

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens for these messages, with the model's own tokenizer and chat template."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Speech:
    """Synthesised audio of one clause: mono int16 at `sample_rate`."""

    text: str
    pcm: npt.NDArray[np.int16]
    sample_rate: int
    compute_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / float(self.sample_rate)


class TextToSpeech(Protocol):
    sample_rate: int  # output rate (the playback device's rate)

    async def start(self) -> None:
        """Load and warm up the voice."""

    async def synthesize(self, text: str) -> Speech:
        """One clause in; empty pcm when there is nothing speakable (no error)."""

    async def close(self) -> None: ...
