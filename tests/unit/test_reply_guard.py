"""Reply guard: unspeakable text, repetition, length cap, first-clause split, what the history keeps (pure)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicecli.pipeline.chunker import ClauseChunker
from voicecli.pipeline.reply_guard import (
    CLEANED,
    LENGTH_CAP,
    REPETITION,
    SPLIT,
    UNSPEAKABLE,
    ReplyGuard,
    Verdict,
    clean,
    split_long_clause,
)


def run(deltas: list[str], guard: ReplyGuard | None = None) -> tuple[list[str], list[tuple[str, Verdict]], int]:
    """Feed LLM deltas through the session's chunker and the guard, as the session does: stop reading
    the LLM at the first stop verdict. Returns (spoken pieces, (clause, verdict) pairs, deltas read)."""
    guard = guard or ReplyGuard()
    chunker = ClauseChunker(first_min_words=1)
    spoken: list[str] = []
    log: list[tuple[str, Verdict]] = []
    read = 0

    def take(clauses: list[str]) -> bool:
        for clause in clauses:
            verdict = guard.check(clause)
            log.append((clause, verdict))
            spoken.extend(verdict.speak)
            if verdict.stop:
                return True
        return False

    for delta in deltas:
        read += 1
        if take(chunker.push(delta)):
            return spoken, log, read
    take(chunker.finish())
    return spoken, log, read


def tokens(text: str) -> list[str]:
    """Deltas the way a BPE model streams them: a word with its leading space, non-Latin text a char at a time."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        lead = " " if i else ""
        if word.isascii():
            out.append(lead + word)
        else:
            out.extend([lead + word[0], *word[1:]])
    return out


def test_normal_three_sentence_reply_passes_untouched() -> None:
    text = "It is sunny and mild in Paris today. Expect a light breeze this afternoon. Take a jacket for the evening."
    spoken, log, _ = run(tokens(text))
    assert all(v.reason == "" and not v.stop and v.speak == (c,) for c, v in log)
    assert " ".join(spoken) == text


def test_tokyo_katakana_loop_is_cut_at_the_first_repeat() -> None:
    """SmolLM2-135M at temperature 0.7, asked the time in Tokyo: a katakana word, then a loop until max_tokens."""
    text = "トーキョー, Tokyo, Japan - 07:15. " + "Japan time - 07:15. " * 40
    deltas = tokens(text.strip())
    guard = ReplyGuard()
    spoken, log, read = run(deltas, guard)
    assert log[0] == ("トーキョー,", Verdict(reason=UNSPEAKABLE))  # dropped, not spelled out for seconds
    assert spoken == ["Tokyo, Japan - 07:15.", "Japan time - 07:15."]
    assert log[-1][1] == Verdict(stop=True, reason=REPETITION)
    assert read < 30 < len(deltas)  # the LLM is stopped, not drained to max_tokens
    assert guard.degenerate and guard.stop_reason == REPETITION
    assert guard.history_text() == "Tokyo, Japan - 07:15. Japan time - 07:15."
    assert guard.check("anything else.") == Verdict(stop=True, reason=REPETITION)


def test_loop_with_junk_between_repeats_is_caught() -> None:
    """Seen on the real model: "Tokyo, Japan - ＋ルビサクス," over and over, cleaned to the same two words."""
    spoken, log, _ = run(
        tokens("レデーバサクス, Tokyo, Japan - ＋ルビサクス, Tokyo, Japan - ＋ルビサクス, Tokyo, Japan - 11:15.")
    )
    assert spoken == ["Tokyo, Japan,"]
    assert [v.reason for _, v in log] == [UNSPEAKABLE, CLEANED, REPETITION]


def test_loop_without_punctuation_is_caught_by_its_word_sequence() -> None:
    guard = ReplyGuard()
    text = "The time in Tokyo is now " * 6
    spoken, _, _ = run(tokens(text.strip()), guard)
    assert guard.stop_reason == REPETITION
    assert len(" ".join(spoken).split()) < 25


def test_a_long_clause_repeated_is_caught_even_with_new_numbers_around_it() -> None:
    guard = ReplyGuard()
    assert guard.check("The local time is 07:15 in Tokyo.").speak
    assert guard.check("The local time is 07:16 in Tokyo.").speak  # digits count: a different clause
    assert guard.check("Or about 07:17, the local time is").speak
    assert guard.check("07:18 in Tokyo, the local time is 07:19.").stop  # "the local time is 07", 3rd time
    assert guard.degenerate


@pytest.mark.parametrize(
    "text",
    [
        "No, no, no. That is not how it works.",
        "No. No. No. That is not how it works.",
        "You can use a pan, you can use a pot, you can use a kettle, or you can use a bowl.",
        "Count with me: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20.",
        "Very, very, very good. It is very, very good indeed.",
        "Step 1, mix the flour. Step 2, mix the eggs. Step 3, mix the two together.",
    ],
)
def test_legitimate_repetition_is_spoken(text: str) -> None:
    guard = ReplyGuard()
    spoken, log, _ = run(tokens(text), guard)
    assert guard.stop_reason is None, log
    assert " ".join(spoken) == text


def test_one_word_clause_four_times_is_a_loop() -> None:
    guard = ReplyGuard()
    spoken, _, _ = run(tokens("No. No. No. No. No. No."), guard)
    assert spoken == ["No.", "No.", "No."]
    assert guard.stop_reason == REPETITION


def test_same_clause_twice_stops() -> None:
    guard = ReplyGuard()
    spoken, _, _ = run(tokens("Paris is the capital of France. PARIS is the capital of France!"), guard)
    assert spoken == ["Paris is the capital of France."]
    assert guard.degenerate


MONOLOGUE = (
    "Rome began as a cluster of villages on seven hills beside the Tiber. Legend says that twins raised by a "
    "wolf founded it in 753 BC, though archaeology tells a slower story. Kings ruled first, until the citizens "
    "expelled the last of them and set up a republic. Two consuls, elected every year, shared the highest "
    "office. The republic fought its neighbours, then Carthage, and slowly came to control the Mediterranean. "
    "Generals grew powerful, civil wars followed, and Julius Caesar made himself dictator. After his murder, "
    "his adopted heir Octavian defeated his rivals and became Augustus, the first emperor. For two centuries "
    "the empire enjoyed relative peace, trade flourished, and roads linked distant provinces. Engineers built "
    "aqueducts, bridges, baths and the great amphitheatre we call the Colosseum. Latin spread across the west, "
    "while Greek remained the language of the east. In the third century, plagues, invasions and rapid changes "
    "of ruler weakened the state. Constantine moved the capital to a new city on the Bosporus. The western half "
    "finally fell in 476, when a Germanic general deposed the last emperor. The eastern half survived for "
    "nearly a thousand years more, until Constantinople fell in 1453. Today the city of Rome still shows every "
    "layer of that long history."
)


def test_two_hundred_word_monologue_is_capped_on_a_sentence_boundary() -> None:
    guard = ReplyGuard(max_words=80)
    text = MONOLOGUE
    assert len(text.split()) >= 200
    spoken, _, read = run(tokens(text), guard)
    said = " ".join(spoken)
    assert guard.stop_reason == LENGTH_CAP and not guard.degenerate
    # It ends with the clause that crossed 80 words, which here also ends a sentence.
    assert 80 < len(said.split()) <= 80 + len(spoken[-1].split())
    assert said.endswith("made himself dictator.") and text.startswith(said)
    assert read < len(tokens(text))
    assert guard.history_text() == said


def test_cap_reached_mid_sentence_ends_that_clause_with_a_full_stop() -> None:
    guard = ReplyGuard(max_words=10)
    assert guard.check("Rome was founded, legend says,").speak == ("Rome was founded, legend says,",)
    v = guard.check("by twins raised by a wolf on the Palatine hill,")
    assert v == Verdict(speak=("by twins raised by a wolf on the Palatine hill.",), stop=True, reason=LENGTH_CAP)
    assert guard.check("and it grew.").stop


def test_cap_reached_at_a_new_sentence_says_nothing_more() -> None:
    guard = ReplyGuard(max_words=10)
    assert guard.check("Rome was founded in 753 BC.").speak
    assert guard.check("Legend says twins founded it,") == Verdict(stop=True, reason=LENGTH_CAP)
    assert guard.history_text() == "Rome was founded in 753 BC."


def test_first_clause_longer_than_the_cap_is_still_spoken() -> None:
    guard = ReplyGuard(max_words=3, first_max_chars=None)
    v = guard.check("The Romans built long straight roads")
    assert v == Verdict(speak=("The Romans built long straight roads.",), stop=True, reason=LENGTH_CAP)


def test_emoji_and_markdown_reply_through_the_chunker_is_spoken_clean() -> None:
    text = (
        "**Sure!** 😊 Here's what you need:\n\n- 🍎 *Apples*, two of them\n- 🍌 Bananas 👍\n\n"
        "## Steps\n1. Slice the fruit ✂️\n2. Mix it in a [bowl](https://example.com/bowl).\n\n```python\nprint('hi')\n```"
    )
    guard = ReplyGuard()
    spoken, _, _ = run([text[i : i + 3] for i in range(0, len(text), 3)], guard)
    said = " ".join(spoken)
    assert guard.stop_reason is None and guard.dropped_clauses == 0
    assert said.startswith("Sure! Here's what you need:") and "Apples, two of them" in said
    assert "bowl." in said and "http" not in said and "*" not in said and "#" not in said
    assert all(unicodedata.category(ch) != "So" for ch in said)


def test_emoji_given_to_the_guard_directly_are_removed() -> None:
    v = ReplyGuard().check("Great job 👍🏽! See you 🙂")
    assert v == Verdict(speak=("Great job! See you",), reason=CLEANED)


def test_mixed_script_clause_keeps_its_english() -> None:
    guard = ReplyGuard()
    assert guard.check("In Russian, cat is кошка, and in Japanese 猫 (ねこ).").speak == (
        "In Russian, cat is, and in Japanese.",
    )


def test_reply_in_another_script_stops_after_two_dropped_clauses() -> None:
    guard = ReplyGuard()
    assert guard.check("東京の時間は午前七時です。") == Verdict(reason=UNSPEAKABLE)
    assert guard.check("Привет, как дела?") == Verdict(stop=True, reason=UNSPEAKABLE)
    assert guard.degenerate and guard.history_text() == ""


def test_greek_letters_alone_are_read_as_symbols() -> None:
    assert clean("π is about 3.14, and α is small.") == ("π is about 3.14, and α is small.", 22, 0)
    assert clean("Καλημέρα means good morning.")[0] == "means good morning."


def test_fullwidth_and_cjk_punctuation_become_ascii() -> None:
    assert clean("The answer is ４２。") == ("The answer is 42.", 13, 0)
    assert clean("Tokyo、Japan") == ("Tokyo,Japan", 10, 0)
    assert clean("café, naïve, Zürich") == ("café, naïve, Zürich", 15, 0)


def test_first_spoken_clause_is_split_to_start_audio_sooner() -> None:
    long_first = "The quick brown fox jumps over the lazy dog and then runs into the forest to find the others."
    guard = ReplyGuard(first_max_chars=60)
    assert guard.check("トーキョー,").dropped
    v = guard.check(long_first)
    assert v.reason == SPLIT and v.text == long_first and len(v.speak) == 2
    assert len(v.speak[0]) <= 60
    assert guard.check(long_first.replace("fox", "cat")).speak == (long_first.replace("fox", "cat"),)
    assert guard.history_text() == long_first + " " + long_first.replace("fox", "cat")


def test_split_long_clause_picks_a_phrase_boundary() -> None:
    assert split_long_clause("Short enough.", 60) == ["Short enough."]
    assert split_long_clause("The weather today is mostly sunny with a light breeze from the east.", 60) == [
        "The weather today is mostly sunny",
        "with a light breeze from the east.",
    ]
    assert split_long_clause("Well, the quick brown fox jumps over the lazy dog and then runs into the forest", 60) == [
        "Well, the quick brown fox jumps over",
        "the lazy dog and then runs into the forest",
    ]
    assert split_long_clause("In the end it rained; we stayed in and read books by the fire all evening", 40) == [
        "In the end it rained;",
        "we stayed in and read books by the fire all evening",
    ]
    # Nothing worth splitting: a tail this short saves almost no synthesis time.
    assert split_long_clause("Canberra is the capital of Australia.", 30) == ["Canberra is the capital of Australia."]
    assert split_long_clause("Pneumonoultramicroscopicsilicovolcanoconiosis is a long word indeed", 20) == [
        "Pneumonoultramicroscopicsilicovolcanoconiosis is a long word indeed"
    ]


def test_bad_arguments_are_rejected() -> None:
    for kwargs in ({"max_words": 0}, {"max_dropped": 0}, {"first_max_chars": 0}):
        with pytest.raises(ValueError):
            ReplyGuard(**kwargs)  # type: ignore[arg-type]


_PIECES = st.sampled_from(
    [
        *("the", "Rome", "time", "Japan", "no", "07:15", "3.14", "café"),
        *("トーキョー", "東京", "кошка", "مرحبا", "😊", "π"),
        *(",", ".", "!", "?", " -", "**", "(", ")", "\n"),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(_PIECES, min_size=1, max_size=12), min_size=1, max_size=40),
    st.integers(1, 60),
    st.sampled_from([None, 20, 60]),
)
def test_property_never_speaks_foreign_letters_and_stays_near_the_cap(
    replies: list[list[str]], cap: int, first_max_chars: int | None
) -> None:
    text = " ".join(" ".join(words) for words in replies)
    guard = ReplyGuard(max_words=cap, first_max_chars=first_max_chars)
    spoken, log, _ = run(tokens(text), guard)
    said = " ".join(spoken)
    for i, ch in enumerate(said):
        if ch.isalpha() and not unicodedata.name(ch).startswith("LATIN"):
            # Only a lone Greek letter (a symbol espeak names) may stay.
            assert unicodedata.name(ch).startswith("GREEK"), said
            assert not any(said[j].isalpha() for j in (i - 1, i + 1) if 0 <= j < len(said)), said
    longest = max((len(v.text.split()) for _, v in log), default=0)
    assert len(said.split()) <= cap + longest
    assert guard.history_text() == said
    stops = [i for i, (_, v) in enumerate(log) if v.stop]
    assert stops in ([], [len(log) - 1])
