"""Fakes for scripted-timeline session tests: a virtual audio clock that advances 20 ms per mic frame, a
speaker that plays 20 ms of samples per frame, and engines whose latency is measured on that clock.

Nothing here sleeps in real time, so the timelines are deterministic and fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from voicecli.engines.base import ChatMessage, LLMStats, Speech, Transcript

RATE = 16_000
FRAME = 320
VOICED = np.full(FRAME, 3000, dtype=np.int16)
SILENT = np.zeros(FRAME, dtype=np.int16)


def marker_classifier(frame: npt.NDArray[np.int16]) -> bool:
    """The VAD decision for fake frames: any non-zero sample is 'speech'."""
    return bool(np.any(frame != 0))


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0
        self._cond = asyncio.Condition()

    def __call__(self) -> float:
        return self.now

    async def advance(self, t: float) -> None:
        self.now = t
        async with self._cond:
            self._cond.notify_all()

    async def sleep(self, dt: float) -> None:
        target = self.now + dt
        async with self._cond:
            await self._cond.wait_for(lambda: self.now >= target - 1e-9)


@dataclass(frozen=True)
class Frame:
    pcm: npt.NDArray[np.int16]
    t: float


class FakeSpeaker:
    """Plays 20 ms of the current reply per tick; records what reached the 'DAC'."""

    rate = RATE

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._buf: list[npt.NDArray[np.int16]] = []
        self._reply: int | None = None
        self._ended: set[int] = set()
        self._played: dict[int, int] = {}
        self._start: dict[int, float] = {}
        self._done: dict[int, asyncio.Event] = {}
        self.flushes: list[float] = []
        self.timeline: list[tuple[float, int, int]] = []  # (t, reply, samples played in this tick)

    def begin_reply(self, reply_id: int) -> None:
        self._reply = reply_id
        self._buf = []
        self._played[reply_id] = 0
        self._done[reply_id] = asyncio.Event()

    async def write(self, pcm: npt.NDArray[np.int16]) -> None:
        self._buf.append(pcm.copy())

    def end_reply(self) -> None:
        if self._reply is not None:
            self._ended.add(self._reply)
            if not self._buf:
                self._done[self._reply].set()

    def flush(self) -> None:
        self.flushes.append(self.clock.now)
        self._buf = []
        if self._reply is not None:
            self._done[self._reply].set()
        self._reply = None

    def played_samples(self, reply_id: int) -> int:
        return self._played.get(reply_id, 0)

    def play_start(self, reply_id: int) -> float | None:
        return self._start.get(reply_id)

    async def wait_reply_done(self, reply_id: int) -> None:
        await self._done[reply_id].wait()

    def tick(self, t: float) -> None:
        """One output callback of 20 ms starting at DAC time t."""
        need = FRAME
        rid = self._reply
        if rid is None:
            return
        while need and self._buf:
            chunk = self._buf[0]
            take = min(need, len(chunk))
            if rid not in self._start:
                self._start[rid] = t + (FRAME - need) / RATE
            self._played[rid] += take
            need -= take
            self._buf[0] = chunk[take:]
            if len(self._buf[0]) == 0:
                self._buf.pop(0)
        if need < FRAME:
            self.timeline.append((t, rid, FRAME - need))
        if not self._buf and rid in self._ended:
            self._done[rid].set()


class ScriptedMic:
    """Yields frames on the virtual clock. `voiced(t)` decides each frame; the speaker ticks in step."""

    def __init__(
        self,
        clock: SimClock,
        speaker: FakeSpeaker,
        voiced: Callable[[float], bool],
        seconds: float,
    ) -> None:
        self.clock = clock
        self.speaker = speaker
        self.voiced = voiced
        self.seconds = seconds

    async def frames(self) -> AsyncIterator[Frame]:
        n = int(self.seconds / 0.02)
        for i in range(n):
            t = round(i * 0.02, 6)
            await self.clock.advance(t)
            self.speaker.tick(t)
            yield Frame(VOICED if self.voiced(t) else SILENT, t)
            for _ in range(10):  # let the turn tasks run to quiescence before the next 20 ms
                await asyncio.sleep(0)


class FakeSTT:
    """Transcribes audio as a description of its length; takes `latency` seconds of virtual time."""

    def __init__(self, clock: SimClock, latency: float = 0.1) -> None:
        self.clock = clock
        self.latency = latency
        self.calls: list[float] = []  # audio seconds per call
        self.finished: list[str] = []
        self.running = 0

    @property
    def idle(self) -> bool:  # as WhisperSTT.idle
        return self.running == 0

    def latency_for(self, seconds: float) -> float:
        return self.latency

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        seconds = len(audio) / RATE
        self.calls.append(seconds)
        self.running += 1
        try:
            await self.clock.sleep(self.latency_for(seconds))
        finally:
            self.running -= 1
        text = f"question of {seconds:.2f} seconds"
        self.finished.append(text)
        return Transcript(text=text, is_speech=True, audio_s=seconds, compute_s=self.latency)


@dataclass
class FakeStream:
    clock: SimClock
    deltas: Sequence[str]
    ttft: float
    per_token: float
    stats: LLMStats = field(default_factory=LLMStats)
    cancelled: bool = False
    produced: int = 0

    def cancel(self) -> None:
        self.cancelled = True
        self.stats.cancelled = True

    async def _gen(self) -> AsyncIterator[str]:
        self.stats.started_at = self.clock.now
        await self.clock.sleep(self.ttft)
        for i, d in enumerate(self.deltas):
            if self.cancelled:
                return
            if i:
                await self.clock.sleep(self.per_token)
                if self.cancelled:
                    return
            if self.stats.first_token_at is None:
                self.stats.first_token_at = self.clock.now
            self.produced += 1
            self.stats.completion_tokens += 1
            yield d
        self.stats.finished_at = self.clock.now

    def __aiter__(self) -> AsyncIterator[str]:
        return self._gen()


REPLY = "Sure, here is a short answer. The weather today is sunny and warm. Have a great day!"


class FakeLLM:
    def __init__(self, clock: SimClock, reply: str = REPLY, ttft: float = 0.1, per_token: float = 0.02):
        self.clock = clock
        self.reply = reply
        self.ttft = ttft
        self.per_token = per_token
        self.streams: list[FakeStream] = []
        self.prompts: list[list[ChatMessage]] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)

    def chat(self, messages: Sequence[ChatMessage], max_tokens: int = 256, sampling: object = None) -> FakeStream:
        self.prompts.append(list(messages))
        words = self.reply.split(" ")
        deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
        s = FakeStream(self.clock, deltas, self.ttft, self.per_token)
        self.streams.append(s)
        return s


class FakeTTS:
    """0.25 s of audio per word, synthesised in `latency` virtual seconds."""

    sample_rate = RATE

    def __init__(self, clock: SimClock, latency: float = 0.04) -> None:
        self.clock = clock
        self.latency = latency
        self.texts: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def synthesize(self, text: str) -> Speech:
        self.texts.append(text)
        await self.clock.sleep(self.latency)
        n = int(0.25 * RATE) * len(text.split())
        return Speech(text, np.full(n, 1000, np.int16), RATE, compute_s=self.latency)
