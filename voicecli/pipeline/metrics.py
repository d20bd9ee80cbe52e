"""Per-turn latency on one clock (DESIGN.md section 4), and the event-loop lag monitor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TurnMetrics:
    """Timestamps (time.monotonic seconds; audio times mapped onto it) of one assistant turn."""

    turn_id: int
    speech_start: float | None = None
    speech_end: float | None = None  # end of the user's last voiced frame (ADC clock)
    eou: float | None = None  # turn confirmed
    stt_done: float | None = None
    llm_request: float | None = None  # the reply was asked of the LLM (during the hangover when prepared)
    llm_first_token: float | None = None
    first_clause: float | None = None
    tts_first_audio: float | None = None
    play_start: float | None = None  # DAC time of the first reply sample
    play_end: float | None = None
    stt_compute_s: float | None = None
    stt_speculative: bool = False
    reply_prepared: bool = False  # the LLM started during the hangover on the speculative transcript
    llm_prompt_tokens: int = 0
    llm_prompt_tokens_evaluated: int = 0
    llm_completion_tokens: int = 0
    llm_tokens_per_s: float | None = None
    tts_audio_s: float = 0.0
    tts_compute_s: float = 0.0
    max_clause_gap_s: float = 0.0  # largest wait of playback on synthesis between clauses
    underruns: int = 0
    overruns: int = 0
    loop_lag_max_s: float = 0.0
    interrupted: bool = False
    barge_in_onset: float | None = None
    barge_in_decided: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def _since_end(self, t: float | None) -> float | None:
        return None if t is None or self.speech_end is None else t - self.speech_end

    @property
    def ttfa(self) -> float | None:
        """Time to first audio: user stopped speaking -> first reply sample at the speaker."""
        return self._since_end(self.play_start)

    def summary(self) -> dict[str, Any]:
        """Stage durations in seconds, for the live view, the events file and the benchmark."""
        s: dict[str, Any] = {
            "ttfa": self.ttfa,
            "confirm": self._since_end(self.eou),
            "stt": self.stt_compute_s,
            "stt_done": self._since_end(self.stt_done),
            "llm_ttft": (
                None
                if self.llm_first_token is None or self.llm_request is None
                else self.llm_first_token - self.llm_request
            ),
            "first_clause": self._since_end(self.first_clause),
            "tts_first_audio": self._since_end(self.tts_first_audio),
            "play_start": self._since_end(self.play_start),
            "tokens_per_s": self.llm_tokens_per_s,
            "tts_rtf": (self.tts_compute_s / self.tts_audio_s) if self.tts_audio_s > 0 else None,
            "max_clause_gap": self.max_clause_gap_s,
            "underruns": self.underruns,
            "overruns": self.overruns,
            "loop_lag_max": self.loop_lag_max_s,
            "interrupted": self.interrupted,
            "barge_in_reaction": (
                None
                if self.barge_in_onset is None or self.barge_in_decided is None
                else self.barge_in_decided - self.barge_in_onset
            ),
            "speculative_stt": self.stt_speculative,
            "reply_prepared": self.reply_prepared,
            "prompt_tokens": self.llm_prompt_tokens,
            "prompt_tokens_evaluated": self.llm_prompt_tokens_evaluated,
        }
        return s

    def raw(self) -> dict[str, Any]:
        return asdict(self)


class LoopLagMonitor:
    """How late `asyncio.sleep` wakes: the worst stall of the event loop since the last `take()`.

    It samples only while active: a 20 ms timer while the session listens to silence would wake the
    loop 50 times a second for nothing, undoing the capture's fewer wake-ups then (Capture.wake_every).
    The session calls `active(True)` when a turn starts (anything but listening) and `active(False)`
    when it is back to listening; `run()` waits without a timer while inactive.
    """

    def __init__(self, interval_s: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._worst = 0.0
        self.worst_ever = 0.0
        self._on = asyncio.Event()  # bound to a loop at its first wait, so it may be made outside one

    def active(self, on: bool) -> None:
        """Sample the loop's lag (True) or stop sampling (False; a sample under way still counts)."""
        if on:
            self._on.set()
        else:
            self._on.clear()

    @property
    def is_active(self) -> bool:
        return self._on.is_set()

    async def run(self) -> None:
        while True:
            await self._on.wait()
            before = self._clock()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, self._clock() - before - self.interval_s)
            self._worst = max(self._worst, lag)
            self.worst_ever = max(self.worst_ever, lag)

    def take(self) -> float:
        worst, self._worst = self._worst, 0.0
        return worst
