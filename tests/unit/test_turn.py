"""The turn lifecycle (pipeline.turn), without audio: proposed at the pause -> confirmed -> speaking -> done
or cancelled, and what each path means for the user (a prepared reply never plays before confirmation)."""

from __future__ import annotations

import pytest

from voicecli.pipeline.turn import Phase, TurnLifecycle, TurnStateError


def test_a_prepared_turn_plays_only_once_confirmed_and_ends_done() -> None:
    turn = TurnLifecycle.proposed(1.0)
    assert not turn.may_play
    turn.confirm(1.5)
    assert turn.may_play
    turn.speak(1.7)
    turn.speak(1.9)  # every later clause: still speaking, the first time is kept
    turn.finish(4.0)
    assert turn.phase is Phase.DONE and not turn.may_play
    assert turn.times == {Phase.PROPOSED: 1.0, Phase.CONFIRMED: 1.5, Phase.SPEAKING: 1.7, Phase.DONE: 4.0}
    assert not turn.interrupted and not turn.wasted


def test_the_user_resuming_throws_the_prepared_work_away() -> None:
    turn = TurnLifecycle.proposed(1.0)
    assert turn.cancel("the user went on talking", 1.3)
    assert turn.wasted and not turn.interrupted and turn.ended
    assert turn.cancel_reason == "the user went on talking"
    with pytest.raises(TurnStateError):
        turn.confirm(1.5)  # a cancelled proposal never becomes the turn


@pytest.mark.parametrize("speaking", [False, True])
def test_a_barge_in_interrupts_a_confirmed_turn_once(speaking: bool) -> None:
    turn = TurnLifecycle.confirmed(2.0)
    if speaking:
        turn.speak(2.5)
    assert turn.cancel("barge_in", 3.0)
    assert turn.interrupted and not turn.wasted
    assert turn.cancelled_in is (Phase.SPEAKING if speaking else Phase.CONFIRMED)
    assert not turn.cancel("shutdown", 3.1)  # already over: the first reason stands
    turn.finish(3.2)  # the task's cleanup runs afterwards: still cancelled
    assert turn.phase is Phase.CANCELLED and turn.cancel_reason == "barge_in"


def test_nothing_is_spoken_for_a_turn_that_was_not_confirmed() -> None:
    with pytest.raises(TurnStateError, match="proposed to speaking"):
        TurnLifecycle.proposed(0.0).speak(0.1)
    done = TurnLifecycle.confirmed(0.0)
    done.finish(1.0)
    with pytest.raises(TurnStateError):
        done.speak(1.1)
