"""The turn ledger: what a finished turn leaves in the history, the records, the log and the counters."""

from __future__ import annotations

from typing import Any

from voicecli.pipeline.history import INTERRUPTED_SUFFIX, History
from voicecli.pipeline.ledger import TurnContext, TurnLedger
from voicecli.pipeline.metrics import TurnMetrics
from voicecli.pipeline.turn import TurnLifecycle


def words(messages: Any) -> int:
    return sum(len(m.content.split()) + 4 for m in messages)


class PlayedReply:
    """What the ledger asks of a reply, answered from a fixed story."""

    def __init__(self, heard: str, spoken: bool) -> None:
        self._heard = heard
        self.spoken_any = spoken
        self.regen_prompt = None  # not asked again

    def play_start(self) -> float | None:
        return 1.0 if self.spoken_any else None

    def device_lost(self) -> bool:
        return False

    def heard(self, cut_short: bool) -> str:
        return self._heard

    def history_text(self, cut_short: bool) -> str:
        return self._heard


class Log:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def turn(turn_id: int, heard: str, spoken: bool = True, interrupted: bool = False) -> TurnContext:
    reply: Any = PlayedReply(heard, spoken)
    return TurnContext(turn_id, TurnMetrics(turn_id), TurnLifecycle.confirmed(0.0), reply, interrupted=interrupted)


def ledger(underruns: list[int]) -> tuple[TurnLedger, History, Log, list[str]]:
    history = History("system", 1000, words)
    log, kinds = Log(), []
    led = TurnLedger(history, lambda kind, **_: kinds.append(kind), transcript=log,  # type: ignore[arg-type]
                     playback_underruns=lambda: underruns[0])  # fmt: skip
    return led, history, log, kinds


def test_a_turn_leaves_what_was_heard_a_record_and_its_share_of_the_counters() -> None:
    total = [3]
    led, history, log, kinds = ledger(total)
    first = turn(1, "It is noon.", interrupted=True)
    led.question(first, "what time is it")
    assert led.finish(first, answered=False)  # cut off by the user, still an answer
    total[0] = 5
    second = turn(2, "Bye.")
    led.question(second, "bye")
    assert led.finish(second, answered=True)
    assert [m.content for m in history.messages()][1:] == [
        "what time is it", "It is noon." + INTERRUPTED_SUFFIX, "bye", "Bye."
    ]  # fmt: skip
    assert [r["timings"]["underruns"] for r in log.records] == [3, 2]
    assert list(led.records) == log.records and led.turns_answered == 2
    assert kinds.count("turn_end") == 2 and kinds.count("play_start") == 2


def test_a_turn_cut_before_a_word_was_played_leaves_no_trace_of_the_question() -> None:
    led, history, log, _ = ledger([0])
    ctx = turn(1, "", spoken=False, interrupted=True)
    led.question(ctx, "what time")
    assert not led.finish(ctx, answered=False)
    assert len(history.messages()) == 1 and log.records == []
