"""The speculator: the work of a pause is adopted by its turn or wasted, and each wasted reply is counted once,
with why."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.fakes import FakeLLM, FakeSpeaker, FakeSTT, FakeTTS, SimClock
from voicecli.engines.base import ChatMessage
from voicecli.pipeline.history import History
from voicecli.pipeline.metrics import TurnMetrics
from voicecli.pipeline.reply import ReplyPipeline
from voicecli.pipeline.speculation import PROMPT_CHANGED, TURN_CANCELLED, USER_WENT_ON, Speculator
from voicecli.pipeline.turn import TurnLifecycle


def rig(pending: bool = False) -> tuple[Speculator, FakeLLM, History, SimClock, list[tuple[str, dict]]]:
    clock = SimClock()
    llm, stt, speaker, tts = FakeLLM(clock), FakeSTT(clock, latency=0.0), FakeSpeaker(clock), FakeTTS(clock)
    history = History("You are a test.", 2000, llm.count_tokens)
    events: list[tuple[str, dict]] = []

    def emit(kind: str, t: float | None = None, turn_id: int = 0, **data: object) -> None:
        events.append((kind, data))

    def new_reply(lifecycle: TurnLifecycle) -> ReplyPipeline:
        return ReplyPipeline(turn_id=0, metrics=TurnMetrics(0), lifecycle=lifecycle, sink=speaker, tts=tts,
                             emit=emit, clock=clock, max_reply_words=70)  # fmt: skip

    spec = Speculator(
        transcribe=stt.transcribe, llm=llm, history=history, max_tokens=50, new_reply=new_reply, emit=emit,
        clock=clock, idle=lambda: True, input_pending=lambda: pending, decided=lambda verdict, text, cost: None,
    )  # fmt: skip
    return spec, llm, history, clock, events


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_reply_is_prepared_at_the_pause_and_adopted_by_its_turn() -> None:
    async def main() -> None:
        spec, llm, history, clock, events = rig()
        spec.start(np.zeros(16000, np.float32))
        await settle()
        assert [k for k, _ in events] == ["reply_prepared"]
        work = spec.take()
        assert work is not None
        work.lifecycle.confirm(clock.now)  # the session confirms the turn
        history.add_user(llm.prompts[0][-1].content)
        adopted = spec.adopt(work, 1, TurnMetrics(1), history.messages())
        assert adopted is not None and spec.adopted == 1 and not spec.wasted
        adopted[1].cancel()

    asyncio.run(main())


def test_each_wasted_reply_is_counted_once_with_its_reason() -> None:
    async def main() -> None:
        spec, llm, _, _, events = rig()
        spec.start(np.zeros(16000, np.float32))
        await settle()
        spec.drop()  # the user went on talking
        spec.start(np.zeros(16000, np.float32))
        await settle()
        work = spec.take()
        assert spec.adopt(work, 2, TurnMetrics(2), [ChatMessage("user", "something else")]) is None
        spec.release(work, TURN_CANCELLED)  # already thrown away: not counted again
        assert spec.wasted == {USER_WENT_ON: 1, PROMPT_CHANGED: 1}
        assert [d["reason"] for k, d in events if k == "reply_wasted"] == [USER_WENT_ON, PROMPT_CHANGED]
        assert all(s.cancelled for s in llm.streams)

    asyncio.run(main())


def test_no_reply_is_prepared_while_earlier_words_wait_to_be_joined() -> None:
    async def main() -> None:
        spec, llm, _, _, events = rig(pending=True)
        spec.start(np.zeros(16000, np.float32))
        await settle()
        assert llm.prompts == [] and events == []

    asyncio.run(main())
