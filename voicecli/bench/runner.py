"""Drive the real conversation (`pipeline.wiring.converse`, the same code as `talk`) over a corpus of
spoken turns and time every stage against the ground truth of the fed audio.

The true end of speech of each clip is found on the capture clock: the fed clip is located in the captured
mic frames by cross-correlation, so `true_end = ADC time of the clip's first sample + its speech end`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.format import SAMPLE_RATE
from voicecli.bench import vcard
from voicecli.bench.corpus import Clip
from voicecli.bench.procstat import cpu_seconds
from voicecli.config import Config
from voicecli.events import Event
from voicecli.pipeline.ports import FrameLike
from voicecli.pipeline.session import Session
from voicecli.pipeline.wiring import Engines

TURN_TIMEOUT_S = 90.0
SETTLE_S = 0.4  # quiet time before feeding the next clip
INTERRUPT_AFTER_S = 0.5  # how far into a reply an interrupting clip is fed
MISSED_AFTER_S = 20.0  # an interrupting clip not heard as a turn by then was missed (not a hung pipeline)


@dataclass
class TurnResult:
    clip: str
    interrupt: bool
    feed_t: float  # monotonic time the clip was handed to the virtual mic
    clip_speech_start_s: float = 0.0  # where the speech is inside the clip (ground truth)
    clip_speech_end_s: float = 0.0
    clip_t0: float | None = None  # ADC time of the clip's first sample (from the capture)
    true_onset: float | None = None
    true_end: float | None = None
    turn_id: int | None = None
    stamps: dict[str, float] = field(default_factory=dict)  # event kind -> monotonic time
    timings: dict[str, Any] = field(default_factory=dict)  # the session's own per-turn summary
    barge_in_reaction: float | None = None  # interrupting onset -> the assistant's decision to stop
    self_interrupted: bool = False  # its reply was cut though no clip was fed to interrupt it
    missed: bool = False  # an interrupting clip that neither cut the reply nor became a turn
    turns_started: int = 0  # turns confirmed while this clip was the latest fed: more than 1 is a false split
    stt_window_s: float | None = None  # the STT window its transcript was computed over
    paused_ms: int = 0  # the clip holds a mid-sentence pause this long (the paused-speech corpus)
    user_text: str = ""  # what the session heard (its transcript) and what the user heard back
    reply_text: str = ""
    regenerated: bool = False  # the first answer copied an earlier reply and was asked again
    prefilled: int = 0  # prompt tokens the LLM evaluated while this clip was being spoken (pipeline.prefill)
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # the semantic end of turn at its pauses
    cut_in: bool = False  # a reply to part of it started playing and the rest of the clip cut it off
    metrics: dict[str, float | None] = field(default_factory=dict)


class _Tap:
    """Keeps the last minute of mic frames (bounded)."""

    def __init__(self) -> None:
        self.frames: collections.deque[tuple[float, npt.NDArray[np.int16]]] = collections.deque(maxlen=3000)

    def __call__(self, frame: FrameLike) -> None:
        self.frames.append((frame.t, frame.pcm.copy()))

    def locate(self, clip: Clip, after: float) -> float | None:
        """ADC time of the clip's first sample, by cross-correlation with what the mic captured."""
        window = [(t, p) for t, p in self.frames if after - 0.3 <= t <= after + clip.duration_s + 3.0]
        if not window:
            return None
        t0 = window[0][0]
        got = np.concatenate([p for _, p in window]).astype(np.float64)
        ref = clip.pcm.astype(np.float64)
        if len(got) < len(ref):
            return None
        n = 1 << int(np.ceil(np.log2(len(got) + len(ref))))
        corr = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(ref, n)), n)[: len(got) - len(ref) + 1]
        lag = int(np.argmax(corr))
        return t0 + lag / SAMPLE_RATE


class _Events:
    def __init__(self, log: Any = None) -> None:
        self.log = log  # also hand every event to this (an EventLog: `bench --events FILE`)
        self.items: list[Event] = []
        self.changed = asyncio.Event()

    def __call__(self, ev: Event) -> None:
        if self.log is not None:
            self.log(ev)
        if ev.kind not in ("mic_level", "llm_delta"):
            self.items.append(ev)
            self.changed.set()

    async def wait(self, pred: Any, start: int = 0, timeout: float = TURN_TIMEOUT_S) -> Event:
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.items):
                if pred(self.items[i]):
                    return self.items[i]
                i += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the pipeline did not answer in time")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=remaining)


IDLE_S = 5.0  # listening with nothing said, before the first clip: the idle CPU figure

STAGES = ("eou", "stt_done", "llm_first_token", "first_clause", "tts_first_audio", "play_start")


async def run_corpus(
    cfg: Config,
    engines: Engines,
    clips: list[Clip],
    *,
    streaming: bool = True,
    progress: Any = None,
    deadline: float | None = None,
    event_log: Any = None,
    figures: dict[str, Any] | None = None,
) -> list[TurnResult]:
    """Converse over `clips` through the virtual sound card; one TurnResult per clip.

    `figures` (optional) receives the run's own numbers: idle CPU while listening (measured over IDLE_S
    before the first clip), replies prepared during the hangover and replies thrown away."""
    from voicecli.pipeline import wiring

    events = _Events(event_log)
    tap = _Tap()
    ready = asyncio.Event()
    holder: list[Session] = []

    def on_ready(session: Session) -> None:
        holder.append(session)
        ready.set()

    conv = asyncio.create_task(
        wiring.converse(
            cfg,
            emit=events,
            engines=engines,
            streaming=streaming,
            tap=tap,
            on_ready=on_ready,
            install_signal_handlers=False,
        )
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([conv, waiter], return_when=asyncio.FIRST_COMPLETED)
    if conv.done():
        conv.result()  # raises the start-up error
    session = holder[0]
    results: list[TurnResult] = []
    try:
        await asyncio.sleep(1.0)  # let the streams settle before the first clip
        if figures is not None:
            cpu0, t0 = cpu_seconds(), time.monotonic()
            await asyncio.sleep(IDLE_S)
            figures["idle_cpu"] = (cpu_seconds() - cpu0) / (time.monotonic() - t0)
        marks: list[int] = []
        for i, clip in enumerate(clips):
            if deadline is not None and time.monotonic() >= deadline and not clip.interrupt:
                break  # soak: time is up (an interrupting clip still goes, its reply is playing)
            if not clip.interrupt:
                await _wait_idle(session)
            mark = len(events.items)
            marks.append(mark)
            res = TurnResult(clip.name, clip.interrupt, await vcard.feed(clip.pcm), paused_ms=clip.paused_ms)
            res.clip_speech_start_s, res.clip_speech_end_s = clip.speech_start_s, clip.speech_end_s
            try:
                eou = await events.wait(
                    lambda e: e.kind == "eou" and not e.data.get("forced"),
                    mark,
                    timeout=MISSED_AFTER_S if clip.interrupt else TURN_TIMEOUT_S,
                )
            except TimeoutError:
                if not clip.interrupt:
                    raise
                # The barge-in was missed and the speech dropped as not the user (e.g. quieter than the
                # echo): count it, and go on once the reply it failed to cut has ended.
                res.missed = True
                results.append(res)
                if progress is not None:
                    progress(res)
                continue
            res.turn_id = eou.turn_id
            results.append(res)
            cut_next = i + 1 < len(clips) and clips[i + 1].interrupt
            while True:
                # The next clip cuts into this reply: feed it once the reply has been playing a while.
                ev = await events.wait(
                    lambda e, tid=res.turn_id, speaking=cut_next: (
                        e.turn_id == tid
                        and (e.kind == "turn_end" or (speaking and e.kind == "state" and e.data["state"] == "speaking"))
                    ),
                    mark,
                )
                if not (ev.kind == "turn_end" and ev.data.get("retracted")):
                    break
                # The judge ended the turn early and the clip went on: its answer is the next turn's.
                nxt = await events.wait(
                    lambda e, tid=res.turn_id: e.kind == "eou" and not e.data.get("forced") and e.turn_id > tid, mark
                )
                res.turn_id = nxt.turn_id
            if cut_next:
                await asyncio.sleep(INTERRUPT_AFTER_S)
            # Locate the clip now, while its frames are still in the (bounded) tap.
            res.clip_t0 = tap.locate(clip, res.feed_t)
            if progress is not None:
                progress(res)
        if results and results[-1].turn_id is not None:  # the last reply plays to its end
            last = results[-1].turn_id
            await events.wait(lambda e: e.kind == "turn_end" and e.turn_id == last, marks[-1])
        ends = [*marks[1:], len(events.items)]
        for res, mark, end in zip(results, marks, ends, strict=True):
            if res.missed:  # nothing after its mark is its own (a later clip's barge-in is not)
                continue
            res.turns_started = sum(
                1 for ev in events.items[mark:end] if ev.kind == "eou" and not ev.data.get("forced")
            )
            res.prefilled = sum(int(ev.data.get("tokens", 0)) for ev in events.items[mark:end] if ev.kind == "prefill")
            res.verdicts = [dict(ev.data) for ev in events.items[mark:end] if ev.kind == "end_of_turn"]
            res.cut_in = res.turns_started > 1 and any(ev.kind == "barge_in" for ev in events.items[mark:end])
            for ev in events.items[mark:]:
                if ev.turn_id == res.turn_id and ev.kind == "stt_done":
                    res.stt_window_s = ev.data.get("window_s")
                if ev.turn_id == res.turn_id and ev.kind in (*STAGES, "speech_end", "play_end"):
                    res.stamps.setdefault(ev.kind, ev.t)
                if ev.turn_id == res.turn_id and ev.kind == "turn_end":
                    res.timings = dict(ev.data.get("timings", {}))
                    res.user_text, res.reply_text = ev.data.get("user", ""), ev.data.get("assistant", "")
                if ev.turn_id == res.turn_id and ev.kind == "reply_regenerated":
                    res.regenerated = True
                if ev.kind == "barge_in" and res.interrupt and "barge_in" not in res.stamps:
                    res.stamps["barge_in"] = ev.t
        cut = {ev.turn_id for ev in events.items if ev.kind == "barge_in" and ev.data.get("during") != "went_on"}
        for i, res in enumerate(results):
            meant = i + 1 < len(results) and results[i + 1].interrupt  # the next clip was fed to cut this reply
            res.self_interrupted = res.turn_id in cut and not meant
        if figures is not None:
            # Turns no clip asked for: the assistant answering its own voice (or a split, counted apart).
            confirmed = sum(1 for ev in events.items if ev.kind == "eou" and not ev.data.get("forced"))
            expected = sum(max(1, r.turns_started) for r in results if r.turn_id is not None)
            figures["phantom_turns"] = max(0, confirmed - expected)
            # ... of which whisper heard the reply's own words, and the turn was dropped unanswered (own_voice)
            figures["own_voice_dropped"] = sum(
                1 for ev in events.items if ev.kind == "stt_rejected" and ev.data.get("reason") == "own voice"
            )
            figures["judge"] = engines.judge_note
            figures["replies_prepared"] = session.replies_prepared
            figures["replies_wasted"] = session.replies_wasted
    finally:
        session.stop()
        await asyncio.wait([conv], timeout=10)
    if figures is not None:
        for ev in events.items:
            if ev.kind == "audio_status":  # device xruns over the whole run (PortAudio's status flags)
                figures["device_xruns"] = {k: ev.data.get(k) for k in ("output_underflows", "input_overflows")}
    for clip, res in zip(clips, results, strict=False):
        res.metrics = derive(res)  # also for clips not located
        if res.clip_t0 is not None:
            res.true_onset = res.clip_t0 + clip.speech_start_s
            res.true_end = res.clip_t0 + clip.speech_end_s
        res.metrics = derive(res)
    return results


async def _wait_idle(session: Session) -> None:
    """Until the assistant has finished speaking and listened for a moment."""
    quiet_since: float | None = None
    while True:
        idle = session.state.value == "listening" and session._turn is None
        now = time.monotonic()
        if idle:
            quiet_since = quiet_since or now
            if now - quiet_since >= SETTLE_S:
                return
        else:
            quiet_since = None
        await asyncio.sleep(0.02)


def derive(res: TurnResult) -> dict[str, float | None]:
    """Per-turn numbers, with every 'since the end of speech' measured from the true end."""
    end = res.true_end

    def since(kind: str) -> float | None:
        t = res.stamps.get(kind)
        return None if t is None or end is None else t - end

    tm = res.timings
    barge = res.stamps.get("barge_in")
    return {
        "ttfa": since("play_start"),
        "turn_confirm": since("eou"),
        "stt": tm.get("stt"),
        "stt_window": res.stt_window_s,
        "stt_done": since("stt_done"),
        "llm_ttft": tm.get("llm_ttft"),
        "first_clause": since("first_clause"),
        "tts_first_audio": since("tts_first_audio"),
        "play_start": since("play_start"),
        "tokens_per_s": tm.get("tokens_per_s"),
        "prompt_evaluated": tm.get("prompt_tokens_evaluated"),
        "prefilled": float(res.prefilled),
        "tts_rtf": tm.get("tts_rtf"),
        "max_clause_gap": tm.get("max_clause_gap"),
        "underruns": tm.get("underruns"),
        "overruns": tm.get("overruns"),
        "loop_lag_max": tm.get("loop_lag_max"),
        "barge_in_reaction": (
            None if barge is None or res.true_onset is None or not res.interrupt else barge - res.true_onset
        ),
        "vad_end_error": (None if end is None or "speech_end" not in res.stamps else res.stamps["speech_end"] - end),
        "echo_erle": tm.get("echo_erle_db"),
        "echo_residual": tm.get("echo_residual_dbfs"),
        "echo_delay": None if tm.get("echo_delay_ms") is None else tm["echo_delay_ms"] / 1000.0,
    }
