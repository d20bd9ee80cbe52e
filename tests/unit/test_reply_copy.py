"""reply_copy: the issue 18 copy measure, deciding it early from streamed words, and the uncopyable history."""

from __future__ import annotations

import pytest

from voicecli.engines.base import ChatMessage
from voicecli.pipeline.history import INTERRUPTED_SUFFIX
from voicecli.pipeline.reply_copy import (
    COPY_JACCARD,
    Exchange,
    Verdict,
    check_opening,
    content_words,
    copies,
    exchanges,
    jaccard,
    opening,
    same_question,
    shares_content_word,
    strip_marker,
    uncopyable,
    words,
)

RAINBOW_Q = "Explain in one sentence how a rainbow forms"
RAINBOW = "The rainbow is a beautiful example of how different things can be connected, even across the sky."
SKY_Q = "Why is the sky blue?"
SKY = "The sky looks blue because air scatters blue sunlight more than red light."
HISTORY = [Exchange(RAINBOW_Q, RAINBOW), Exchange(SKY_Q, SKY)]


def stream(text: str, question: str, earlier: list[Exchange]) -> tuple[Verdict, int]:
    """Feed `text` word by word (each delta a word and its space) until a verdict; (verdict, words read)."""
    so_far = ""
    for w in text.split():
        so_far += w + " "
        check = check_opening(so_far, question, earlier)
        if check.verdict is not Verdict.UNDECIDED:
            return check.verdict, len(so_far.split())
    return check_opening(so_far, question, earlier, final=True).verdict, len(text.split())


def test_words_are_lower_case_without_punctuation() -> None:
    assert words("The Earth's sky, at dusk -- is RED!") == ["the", "earth's", "sky", "at", "dusk", "is", "red"]
    assert words("It’s fine.") == ["it's", "fine"]
    assert opening("one two three four five six seven eight nine ten") == [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
    ]


def test_jaccard() -> None:
    assert jaccard(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert jaccard(["a", "b"], ["c", "d"]) == 0.0
    assert jaccard([], []) == 1.0
    assert jaccard(["a", "b", "c", "d"], ["a", "b", "c", "e"]) == pytest.approx(3 / 5)


def test_the_measure_on_whole_replies() -> None:
    # The issue's case: the rainbow reply again for the black hole question.
    assert copies(RAINBOW, "What is a black hole?", HISTORY) == 0
    # Mostly the same words in another order: 7 of the 8 opening words shared (7/9 >= 0.75).
    assert copies("The rainbow is a beautiful example of how things connect.", "Hello there.", HISTORY) == 0
    assert copies("A black hole is a region where gravity is so strong.", "What is a black hole?", HISTORY) is None
    # The same question asked again may get the same reply.
    assert copies(SKY, "Why is the sky blue?", HISTORY) is None
    assert copies("", "What is a black hole?", HISTORY) is None


def test_a_short_final_reply_is_compared_as_it_is() -> None:
    earlier = [Exchange("Wait, stop", "Okay.")]
    assert copies("Okay.", "Hold on, that's enough", earlier) == 0
    assert copies("Okay, I will stop there.", "Hold on, that's enough", earlier) is None


def test_an_identical_opening_is_a_copy_after_five_words() -> None:
    verdict, read = stream(RAINBOW.replace("even across the sky", "like spiders"), "How do spiders make silk?", HISTORY)
    assert (verdict, read) == (Verdict.COPY, 5)


def test_a_fresh_reply_is_cleared_within_a_few_words() -> None:
    verdict, read = stream(
        "Spiders make silk from proteins in glands at their back.", "How do spiders make silk?", HISTORY
    )
    assert verdict is Verdict.FRESH
    assert read <= 3


def test_a_reply_that_opens_like_an_earlier_one_then_turns_away_is_fresh() -> None:
    # Same first three words, then its own: no longer able to reach the same opening or 0.75.
    verdict, read = stream(
        "The rainbow is what you see when sunlight is split by raindrops.", "What makes the colours?", HISTORY
    )
    assert verdict is Verdict.FRESH
    assert read <= 6


def test_the_decision_never_changes_with_more_words() -> None:
    replies = [RAINBOW, SKY, "The rainbow is a beautiful sight, and black holes are dark.", "Black holes eat light."]
    for reply in replies:
        for question in ["What is a black hole?", RAINBOW_Q]:
            final = check_opening(reply, question, HISTORY, final=True).verdict
            ws = reply.split()
            for n in range(1, len(ws) + 1):
                early = check_opening(" ".join(ws[:n]) + " ", question, HISTORY).verdict
                assert early in (Verdict.UNDECIDED, final), (reply, question, n)


def test_a_partial_last_word_is_not_counted_until_final() -> None:
    # "The rainbow is a beau" may still become "beautiful": the four complete words are undecided.
    assert check_opening("The rainbow is a beau", "Hi", HISTORY).verdict is Verdict.UNDECIDED
    assert check_opening("The rainbow is a beautiful", "Hi", HISTORY).words == 4
    assert check_opening("The rainbow is a beautiful ", "Hi", HISTORY).verdict is Verdict.COPY


def test_clause_end_forces_a_decision() -> None:
    # A short first clause with the earlier reply's first words: a copy, judged before it is spoken.
    check = check_opening("The rainbow is,", "What is a black hole?", HISTORY, clause_end=True)
    assert check.verdict is Verdict.COPY and check.copied == 0
    assert check_opening("A black hole,", "What is a black hole?", HISTORY, clause_end=True).verdict is Verdict.FRESH
    # Two words are too few to call it a copy.
    assert check_opening("The rainbow,", "What is a black hole?", HISTORY, clause_end=True).verdict is Verdict.FRESH


def test_undecided_needs_words() -> None:
    assert check_opening("", "Hi", HISTORY).verdict is Verdict.UNDECIDED
    assert check_opening("", "Hi", HISTORY, final=True).verdict is Verdict.FRESH
    assert check_opening("anything at all", "Hi", []).verdict is Verdict.FRESH


def test_copy_jaccard_is_the_issue_threshold() -> None:
    assert COPY_JACCARD == 0.75


def test_content_words() -> None:
    assert content_words("Explain in one sentence how a rainbow forms") == {"rainbow", "form"}
    assert content_words("How do spiders make silk?") == {"spider", "silk"}
    assert content_words("Why is the sky blue?") == {"sky", "blue"}
    assert content_words("Wait, stop") == set()
    assert content_words("Hold on, that's enough") == set()
    assert content_words("Hello there.") == set()
    assert content_words("Black holes are stars' remains.") == {"black", "hole", "star", "remain"}


def test_shares_content_word() -> None:
    assert shares_content_word("How do spiders make silk?", "A spider spins it from glands.") is True
    assert shares_content_word("How do spiders make silk?", "The rainbow is a beautiful example.") is False
    assert shares_content_word("What is a black hole?", "A black hole is a region of space.") is True
    # A measure on words, not sense: an answer that names none of the question's words counts as sharing none.
    assert shares_content_word("What is a black hole?", "It is a region of space.") is False
    assert shares_content_word("Wait, stop", "The rainbow is beautiful.") is None
    assert shares_content_word("Hello there.", "Hi!") is None


def test_same_question() -> None:
    assert same_question("Why is the sky blue?", "why is the sky blue")
    assert same_question("Why is the sky blue?", "So why's the sky blue?")
    assert not same_question("Why is the sky blue?", "What is a black hole?")
    assert not same_question("Wait, stop", "Hold on, that's enough")


def test_markers_are_stripped() -> None:
    assert strip_marker("The rainbow is" + INTERRUPTED_SUFFIX) == "The rainbow is"
    assert strip_marker("The rainbow is...") == "The rainbow is"
    assert strip_marker("The rainbow is") == "The rainbow is"


def prompt() -> list[ChatMessage]:
    return [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", RAINBOW_Q),
        ChatMessage("assistant", RAINBOW),
        ChatMessage("user", SKY_Q),
        ChatMessage("assistant", "The rainbow is a beautiful example" + INTERRUPTED_SUFFIX),
        ChatMessage("user", "Wait, stop"),
        ChatMessage("assistant", "Okay."),
        ChatMessage("user", "How do spiders make silk?"),
        ChatMessage("assistant", "Spiders make silk in glands."),
        ChatMessage("user", "What is a black hole?"),
    ]


def test_exchanges_read_the_prompt() -> None:
    got = exchanges(prompt())
    assert [e.question for e in got] == [RAINBOW_Q, SKY_Q, "Wait, stop", "How do spiders make silk?"]
    assert got[1] == Exchange(SKY_Q, "The rainbow is a beautiful example", interrupted=True)
    assert not got[0].interrupted


def test_uncopyable_drops_the_echoed_turns_and_keeps_the_question() -> None:
    out = uncopyable(prompt(), "The rainbow is a beautiful example of how", keep_exchanges=5)
    assert out[0] == ChatMessage("system", "Be brief.")
    assert out[-1] == ChatMessage("user", "What is a black hole?")
    texts = " ".join(m.content for m in out)
    assert "rainbow" not in texts.lower()  # the copied reply and the reply that already copied it
    assert [m.content for m in out[1:-1]] == [
        "Wait, stop",
        "Okay.",
        "How do spiders make silk?",
        "Spiders make silk in glands.",
    ]
    assert not any(
        copies(m.content, "What is a black hole?", [Exchange("x", "The rainbow is a beautiful example")])
        for m in out[1:-1]
    )


def test_uncopyable_keeps_only_recent_exchanges() -> None:
    out = uncopyable(prompt(), "Spiders make silk in glands.", keep_exchanges=1)
    assert [m.content for m in out] == ["Be brief.", "Wait, stop", "Okay.", "What is a black hole?"]
    alone = uncopyable(prompt(), "anything", keep_exchanges=0)
    assert alone == [ChatMessage("system", "Be brief."), ChatMessage("user", "What is a black hole?")]


def test_uncopyable_shows_interrupted_replies_as_asked() -> None:
    msgs = [*prompt()[:5], ChatMessage("user", "What is a black hole?")]
    out = uncopyable(msgs, "Black holes are", keep_exchanges=2, interrupted_as="...")
    assert out[4] == ChatMessage("assistant", "The rainbow is a beautiful example...")
    plain = uncopyable(msgs, "Black holes are", keep_exchanges=2)
    assert plain[4] == ChatMessage("assistant", "The rainbow is a beautiful example")


def test_uncopyable_needs_a_question() -> None:
    with pytest.raises(ValueError):
        uncopyable(prompt()[:-1], "x")
