"""The words check on a turn that began while a reply played (pipeline.own_voice): the reply heard back is
dropped, a user's own words are not, whatever the reply talked about."""

from __future__ import annotations

import pytest

from voicecli.pipeline.own_voice import AHEAD_WORDS, TAIL_WORDS, EchoReference, is_own_voice, words

REPLY = (
    "The ocean covers most of the planet. When a glass tips over, it's all being spilled onto the table, "
    "and the water runs to the lowest point. That is why floors in old houses collect puddles."
)


def ref(heard_words: int) -> EchoReference:
    return EchoReference.around(REPLY, " ".join(REPLY.split()[:heard_words]), until=10.0)


@pytest.mark.parametrize(
    "echo",
    [
        "It's all being spilled.",
        "all being spilled onto the table",
        "it is all being spilled onto the table",
        "I was glass tips over, it's all be-",  # real whisper: 4 of 6 whole words, a run of 4
    ],
)
def test_the_reply_heard_back_is_its_own_voice(echo: str) -> None:
    assert is_own_voice(echo, ref(heard_words=16))


@pytest.mark.parametrize("echo", ["spilled.", "Onto the", "It's all"])
def test_one_or_two_words_at_the_cut_are_its_own_voice(echo: str) -> None:
    """An echo cut short: exactly the words playing when the reply stopped."""
    assert is_own_voice(echo, ref(heard_words=16))


@pytest.mark.parametrize(
    "user",
    [
        "Stop.",
        "Wait, the table?",  # two of its words, but not as it said them
        "The ocean?",  # its words, long before the cut
        "Puddles?",  # its word, but long after the words queued at the cut
        "What about the ocean on other planets?",
        "No, tell me how the water gets onto the table instead.",
        "When does a glass of water spill all over?",  # 5 of its words in order, scattered
        "",
    ],
)
def test_a_user_talking_over_it_is_not(user: str) -> None:
    assert not is_own_voice(user, ref(heard_words=16))


def test_only_the_words_around_the_cut_count() -> None:
    """The opening of a long reply, long gone from the speaker, is no echo of what is playing now."""
    cut = len(words(REPLY)) - 1
    late = ref(heard_words=cut)
    assert len(late.words) == min(TAIL_WORDS, cut) + min(AHEAD_WORDS, len(words(REPLY)) - cut)
    assert not is_own_voice("The ocean covers most of the planet", late)
    assert is_own_voice("floors in old houses collect puddles", late)


def test_a_reference_covers_speech_that_began_by_its_deadline() -> None:
    r = ref(5)
    assert r.covers(9.9) and r.covers(10.0) and not r.covers(10.1)
    assert not EchoReference((), 10.0).covers(0.0)


def test_a_follow_up_sharing_scattered_words_is_the_user() -> None:
    """The scripted e2e case: the question again right after "Sure, here is a quick answer: the weather today ...":
    "is", "the weather", "today" in order (4 of 6), but no run of more than 2."""
    reply = "Sure, here is a quick answer: the weather today looks sunny and warm. Expect light wind after lunch."
    assert not is_own_voice("What is the weather like today?", EchoReference.around(reply, reply, until=0.0))
