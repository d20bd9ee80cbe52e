"""Clause chunker: every rule with its exact clauses, streaming invariance, and property tests."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicecli.pipeline.chunker import CODE_MENTION, LONG_WORD_CHARS, ClauseChunker, normalise, split_clauses
from voicecli.pipeline.reply import played_text


def stream(text: str, sizes: list[int], **options: Any) -> list[str]:
    """Feed `text` in deltas of the given sizes (cycled), then finish."""
    chunker = ClauseChunker(**options)
    out: list[str] = []
    i = 0
    n = 0
    while i < len(text):
        size = sizes[n % len(sizes)]
        out += chunker.push(text[i : i + size])
        i += size
        n += 1
    return out + chunker.finish()


# -- hard boundaries ---------------------------------------------------------------------------


def test_sentence_ends_flush_at_period_exclamation_and_question() -> None:
    assert split_clauses("It is late. Go home! Are you sure? Yes.") == [
        "It is late.",
        "Go home!",
        "Are you sure?",
        "Yes.",
    ]


def test_closing_quote_after_sentence_end_stays_with_the_sentence() -> None:
    assert split_clauses('She said "stop." Then she left.') == ['She said "stop."', "Then she left."]


def test_each_newline_ends_a_clause() -> None:
    assert split_clauses("First paragraph without a stop\n\nSecond one\nthird line") == [
        "First paragraph without a stop",
        "Second one",
        "third line",
    ]


def test_ellipsis_inside_a_sentence_does_not_split() -> None:
    assert split_clauses("Well... maybe it works. Hmm… let me see.") == [
        "Well... maybe it works.",
        "Hmm… let me see.",
    ]


def test_ellipsis_before_a_capital_splits_once_the_clause_is_long_enough() -> None:
    assert split_clauses("Fine. I was thinking about it… Maybe tomorrow.") == [
        "Fine.",
        "I was thinking about it…",
        "Maybe tomorrow.",
    ]


# -- soft boundaries ---------------------------------------------------------------------------


def test_comma_semicolon_colon_split_only_with_enough_words() -> None:
    text = "Okay. Yes, fine. The result is good, and fast; nobody complained at all: great news."
    assert split_clauses(text) == [
        "Okay.",
        "Yes, fine.",  # "Yes," is one word: too short to stand alone, even as the first clause
        "The result is good,",
        "and fast; nobody complained at all:",  # "and fast;" has 2 words, fewer than 4
        "great news.",
    ]


def test_dashes_split_like_commas_but_hyphenated_words_stay() -> None:
    assert split_clauses("Fine. This well-known trick works — mostly, but - sometimes not.") == [
        "Fine.",
        "This well-known trick works —",
        "mostly, but - sometimes not.",
    ]


def test_first_clause_flushes_early() -> None:
    # The first clause needs only first_min_words (2); later ones need min_clause_words (4).
    assert split_clauses("Sure thing, here it is, as you asked, my friend.") == [
        "Sure thing,",
        "here it is, as you asked,",
        "my friend.",
    ]
    assert split_clauses("Sure, here it is.", first_min_words=1) == ["Sure,", "here it is."]


def test_first_clause_is_returned_by_push_before_the_reply_ends() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Sure thing, ") == []  # the next word has not arrived: "," could be "1,000"
    assert chunker.push("let me check.") == ["Sure thing,"]
    assert chunker.finish() == ["let me check."]


def test_max_words_forces_a_flush_at_a_word_boundary() -> None:
    words = [f"w{i}" for i in range(60)]
    clauses = split_clauses(" ".join(words), max_words=25)
    assert clauses == [" ".join(words[:25]), " ".join(words[25:50]), " ".join(words[50:])]


# -- never split ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sentence",
    [
        "Pi is about 3.14 and e is 2.718.",
        "We meet at 10:30, or at 5 p.m. tomorrow.",
        "It costs $29.95 today.",
        "The price is €5,000 for now.",
        "There are 1,000,000 stars.",
        "Bring tools, e.g. a hammer, i.e. the big one.",
        "Dr. Smith met Mr. Jones and Mrs. Brown with Ms. Green on St. Mark's Square.",
        "It is Team A vs. Team B today.",
        "They flew to the U.S. Army base.",
        "J. R. R. Tolkien wrote it.",
        "See https://example.com/a.b?c=d for details.",
        "Mail first.last@example.co.uk today.",
        "Update to v1.2.3 now.",
        "Apples, pears, etc. are fruit.",
    ],
)
def test_never_split_inside_numbers_abbreviations_initials_urls(sentence: str) -> None:
    assert split_clauses("Okay. " + sentence + " Done.", min_clause_words=25) == [
        "Okay.",
        sentence,
        "Done.",
    ]


def test_a_trailing_period_is_held_until_the_next_char_arrives() -> None:
    chunker = ClauseChunker()
    assert chunker.push("The value is 3.") == []
    assert chunker.push("14 exactly") == []
    assert chunker.push(". Ask Dr.") == ["The value is 3.14 exactly."]
    assert chunker.push(" Smith") == []
    assert chunker.push(" today. Then") == ["Ask Dr. Smith today."]
    assert chunker.finish() == ["Then"]


def test_etc_before_a_capital_ends_the_sentence() -> None:
    assert split_clauses("Bring pens, paper, etc. Then we start.", min_clause_words=25, first_min_words=25) == [
        "Bring pens, paper, etc.",
        "Then we start.",
    ]


# -- markdown and symbols ------------------------------------------------------------------------


def test_bold_emphasis_and_underscores_are_stripped_but_snake_case_stays() -> None:
    assert split_clauses("This is **very** *really* _quite_ __big__ for my_var and 2 * 3.") == [
        "This is very really quite big for my_var and 2 * 3."
    ]


def test_headings_become_their_own_clause() -> None:
    assert split_clauses("## Setup steps\nInstall it. #1 tip: relax") == [
        "Setup steps",
        "Install it.",
        "#1 tip: relax",
    ]


def test_each_bullet_and_numbered_item_is_its_own_clause() -> None:
    text = "You need:\n- flour\n* two eggs\n  + milk\n1. Mix them\n2) Bake it\n-5 degrees is cold"
    assert split_clauses(text) == [
        "You need:",
        "flour",
        "two eggs",
        "milk",
        "Mix them",
        "Bake it",
        "-5 degrees is cold",
    ]


def test_links_become_their_text_and_inline_code_its_text() -> None:
    assert split_clauses("Read [the guide](https://x.org/a_b) and run `make test` now. ![A cat](cat.png)") == [
        "Read the guide and run make test now.",
        "A cat",
    ]


def test_fenced_code_is_replaced_by_one_spoken_mention() -> None:
    text = "Try this:\n```python\nprint('hi. there')\nx = [1, 2]\n```\nThat prints hi."
    assert split_clauses(text) == ["Try this:", CODE_MENTION, "That prints hi."]


def test_unterminated_code_fence_is_never_spoken() -> None:
    assert split_clauses("Code:\n```\nrm -rf / . Secret words here.") == ["Code:", CODE_MENTION]


def test_emoji_and_pictographs_are_dropped() -> None:
    assert split_clauses("Great job 🎉 you did it 👍🏽! Weather ☀️ is 25°C → nice ✅.") == [
        "Great job you did it!",
        "Weather is 25°C nice.",
    ]


def test_rules_quotes_tables_and_whitespace_are_cleaned() -> None:
    text = "> Quoted   text\there.\n\n---\n| a | b |\n|---|---|\nEnd."
    assert split_clauses(text) == ["Quoted text here.", "a b", "End."]


def test_backslash_escapes_keep_the_literal_char() -> None:
    assert split_clauses(r"Use \*stars\* literally.") == ["Use *stars* literally."]


def test_very_long_words_are_broken_and_clauses_come_out_while_streaming() -> None:
    chunker = ClauseChunker(max_words=25)
    early: list[str] = []
    for _ in range(200):
        early += chunker.push("x" * 50)  # 10,000 chars, never a space
    late = chunker.finish()
    assert all(len(word) <= LONG_WORD_CHARS for clause in early + late for word in clause.split())
    assert sum(len(c.replace(" ", "")) for c in early) >= 10_000 - 25 * LONG_WORD_CHARS
    assert "".join(early + late).replace(" ", "") == "x" * 10_000


def test_endless_reply_without_punctuation_streams_out_in_bounded_clauses() -> None:
    chunker = ClauseChunker(max_words=25)
    emitted = 0
    for _ in range(2000):
        clauses = chunker.push("token ")
        assert all(len(c.split()) == 25 for c in clauses)
        emitted += len(clauses)
    assert emitted == 2000 // 25 - 1  # the last 25 wait for the word after them
    assert chunker.finish() == [" ".join(["token"] * 25)]


# -- lifecycle ---------------------------------------------------------------------------------


def test_finish_starts_a_new_reply_with_an_early_first_clause() -> None:
    chunker = ClauseChunker()
    assert chunker.push("One. Two words, and more") == ["One."]
    assert chunker.finish() == ["Two words, and more"]
    assert chunker.push("Hi there,") == []
    assert chunker.push(" friend") == ["Hi there,"]


def test_reset_drops_unspoken_text() -> None:
    chunker = ClauseChunker()
    chunker.push("This reply was interrupted mid")
    chunker.reset()
    assert chunker.push("New reply.") == []
    assert chunker.finish() == ["New reply."]


def test_empty_and_whitespace_only_replies_give_no_clauses() -> None:
    assert split_clauses("") == []
    assert split_clauses(" \n\t \n") == []
    assert split_clauses("🎉 ** `` ✅ ") == []


@pytest.mark.parametrize("options", [{"max_words": 0}, {"min_clause_words": 30}, {"first_min_words": 0}])
def test_bad_limits_raise_value_error(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="max_words"):
        ClauseChunker(**options)


# -- streaming invariance and properties ------------------------------------------------------

SAMPLE = (
    "# Answer\nSure thing, **Dr. Smith**: the total is $1,234.56 (about 3.5% more). "
    "See [docs](https://ex.com/a.b?c=d) or mail a_b@ex.com... then run `v1.2.3` — quickly!\n"
    "- first item, with a comma\n- second 🎉 item\n```sh\necho hi. there\n```\nJ. R. R. Tolkien, e.g. him."
)


def test_random_delta_sizes_give_the_same_clauses_as_one_push() -> None:
    whole = split_clauses(SAMPLE)
    rng = random.Random(7)
    for _ in range(200):
        sizes = [rng.randint(1, 12) for _ in range(50)]
        assert stream(SAMPLE, sizes) == whole
    assert stream(SAMPLE, [1]) == whole


# Pieces that exercise every rule (markup, abbreviations, numbers) far more often than random text.
PIECES = [*"ab Z9.,;:!?…-—*_`#>[]()!\\|~\n\t ", "...", "```", "1. ", "e.g.", "Dr.", "🎉", "$", "- ", "](u)"]
markdownish = st.lists(st.sampled_from(PIECES), max_size=80).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(markdownish, st.text(max_size=200)), cuts=st.lists(st.integers(1, 15), min_size=1))
def test_clauses_join_to_the_normalised_text_however_the_text_is_split(text: str, cuts: list[int]) -> None:
    clauses = stream(text, cuts, max_words=6, min_clause_words=3)
    assert " ".join(clauses) == normalise(text)
    assert clauses == split_clauses(text, max_words=6, min_clause_words=3)
    for clause in clauses:
        assert clause and clause == clause.strip()
        assert len(clause.split()) <= 6


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec=None), max_size=300))
def test_arbitrary_unicode_never_crashes_and_keeps_the_invariants(text: str) -> None:
    clauses = split_clauses(text)
    assert " ".join(clauses) == normalise(text)
    assert all(c and c == c.strip() and len(c.split()) <= 25 for c in clauses)
    # Every clause must be encodable for the TTS engine (no lone surrogates, no controls).
    for clause in clauses:
        clause.encode("utf-8")


def test_a_long_first_clause_is_cut_before_a_conjunction_once_it_has_enough_words() -> None:
    """With first_soft_words, the first clause need not wait for the LLM's first comma: it ends before "and",
    "with", "because" ... once it has that many words; later clauses and short openings are untouched."""
    text = "The moon is actually a very special and mysterious object with a long history and many craters."
    chunker = ClauseChunker(first_min_words=1, first_soft_words=5)
    clauses: list[str] = []
    for word in text.split(" "):  # token by token, as the LLM streams
        clauses += chunker.push(word + " ")
        if clauses:
            break
    assert clauses == ["The moon is actually a very special"]  # out as soon as " and" arrived
    clauses += chunker.push("") + chunker.finish()
    rest = ClauseChunker(first_min_words=1, first_soft_words=5)
    whole = rest.push(text) + rest.finish()
    assert whole[0] == "The moon is actually a very special"
    assert " ".join(whole) == normalise(text)
    assert not any(c.startswith("with") for c in whole[1:])  # only the first clause is cut this way
    short = ClauseChunker(first_min_words=1, first_soft_words=5)
    assert (short.push("Cats and dogs sleep a lot.") + short.finish()) == ["Cats and dogs sleep a lot."]
    plain = ClauseChunker(first_min_words=1)  # without it: the first comma or sentence end, as before
    assert (plain.push(text) + plain.finish())[0] == text


def test_an_eager_first_clause_ends_on_its_own_punctuation_not_on_the_next_token() -> None:
    """first_eager: "Sure," is spoken as soon as the comma arrives (one LLM token, ~40 ms on 2 cores, before
    " here" would show what follows); later clauses, numbers and abbreviations still wait to be certain."""
    tokens = ["Sure", ",", " here", " is", " a", " quick", " answer", ":", " the", " sky", " is", " blue", "."]
    chunker = ClauseChunker(first_min_words=1, first_eager=True)
    when = {}
    for n, token in enumerate(tokens):
        for clause in chunker.push(token):
            when[clause] = n
    when.update({c: len(tokens) for c in chunker.finish()})
    assert when == {"Sure,": 1, "here is a quick answer:": 8, "the sky is blue.": len(tokens)}
    plain = ClauseChunker(first_min_words=1)
    assert plain.push("Sure") + plain.push(",") == [] and plain.push(" here") == ["Sure,"]
    for opening in (["3", ".", "14", " is"], ["Dr", ".", " Who", " is"], ["Well", "..", ".", " maybe"]):
        waiting = ClauseChunker(first_min_words=1, first_eager=True)
        assert [c for t in opening for c in waiting.push(t)] == [], opening


# Words and the punctuation after them, always followed by a space or the end: an eager cut cannot know
# that "ae." goes on as "ae.g.", nor that a closer or a mark (", ,", "Sure." + "..") will be glued on after it.
EAGER_WORDS = ["a", "Sure", "b9", "e.g.", "Dr.", "3.14", "Z", "don't", "**x**", "`c`"]
eager_text = st.lists(
    st.tuples(st.sampled_from(EAGER_WORDS), st.sampled_from(["", ",", ";", "!", "?", ".", ":", "\n"])),
    max_size=40,
).map(lambda pairs: " ".join(w + p for w, p in pairs))


@settings(max_examples=300, deadline=None)
@given(text=eager_text, cuts=st.lists(st.integers(1, 15), min_size=1))
def test_eager_clauses_still_join_to_the_normalised_text(text: str, cuts: list[int]) -> None:
    """Where a space or the end follows the first clause's punctuation, nothing is lost or moved."""
    clauses = stream(text, cuts, max_words=6, min_clause_words=3, first_min_words=1, first_eager=True)
    assert " ".join(clauses) == normalise(text)
    assert all(c and c == c.strip() and len(c.split()) <= 6 for c in clauses)


def _when(tokens: list[str], **options: Any) -> list[tuple[int, str]]:
    """(index of the token after which each clause came out, clause); len(tokens) for the end of the reply."""
    chunker = ClauseChunker(first_min_words=1, first_eager=True, **options)
    out = [(n, c) for n, token in enumerate(tokens) for c in chunker.push(token)]
    return out + [(len(tokens), c) for c in chunker.finish()]


def test_a_standalone_opener_is_the_first_clause_before_its_comma() -> None:
    """first_opener: "Sure" is spoken the moment it is written, a token before the comma after it (each token of
    the 0.5B model is ~40 ms on 2 cores); the comma opens the next clause, and every word is still said once."""
    tokens = ["Sure", ",", " here", " is", " a", " quick", " answer", ":", " the", " sky", " is", " blue", "."]
    assert _when(tokens, first_opener=True) == [(0, "Sure"), (8, ", here is a quick answer:"), (13, "the sky is blue.")]
    assert _when(tokens)[0] == (1, "Sure,")  # without it: at the comma
    assert _when(["Yes", "!", " It", " is", "."], first_opener=True) == [(0, "Yes"), (5, "! It is.")]
    # Only a whole reply's first word, as written: not a later one, not a word still being written.
    assert _when(["The", " answer", " is", " yes", "."], first_opener=True) == [(4, "The answer is yes.")]
    assert _when(["S", "ure", ",", " ok"], first_opener=True)[0] == (1, "Sure")
    assert _when(["Su", "rely", ",", " ok"], first_opener=True)[0] == (2, "Surely,")


def test_an_opener_that_goes_on_as_a_longer_word_is_said_whole_after_it() -> None:
    """ "Sure" + "ly": the word went on after "Sure" was spoken; the next clause says it whole, never "ly"."""
    clauses = [c for _, c in _when(["Sure", "ly", ",", " I", " can", " help", "."], first_opener=True)]
    assert clauses == ["Sure", "Surely, I can help."]


OPENER_WORDS = ["Sure", "Yes", "sure", "b9", "Okay", "Dr.", "3.14"]
opener_text = st.lists(
    st.tuples(st.sampled_from(OPENER_WORDS), st.sampled_from(["", ",", "!", ".", ":", "\n"])), min_size=1, max_size=20
).map(lambda pairs: " ".join(w + p for w, p in pairs))


@settings(max_examples=300, deadline=None)
@given(text=opener_text, cuts=st.lists(st.integers(1, 15), min_size=1))
def test_opener_clauses_say_every_word_once_in_order(text: str, cuts: list[int]) -> None:
    """However the deltas are cut, the clauses say the normalised text: only the punctuation right after an opener
    spoken on its own moves, to the start of the next clause."""
    clauses = stream(text, cuts, max_words=6, min_clause_words=3, first_min_words=1, first_eager=True,
                     first_opener=True)  # fmt: skip
    joined = " ".join(clauses)
    if clauses and clauses[0] in ("Sure", "Yes", "Okay") and len(clauses) > 1 and clauses[1][:1] in ",!.:":
        joined = clauses[0] + " ".join(clauses[1:])
    assert joined == normalise(text)
    assert all(c and c == c.strip() and len(c.split()) <= 6 for c in clauses)


def test_what_the_user_heard_of_an_opener_reads_as_the_llm_wrote_it() -> None:
    """The history and the transcript join the clauses: the comma that opened the clause after "Sure" is glued
    back on, whole or cut short by barge-in."""
    clauses = [(0, 100, "Sure"), (100, 400, ", here is a quick answer:"), (400, 500, "the sky is blue.")]
    assert played_text(clauses, 500) == "Sure, here is a quick answer: the sky is blue."
    assert played_text(clauses, 250) == "Sure, here is"
    assert played_text([(0, 100, "Yes"), (100, 200, "! It is. Really .")], 200) == "Yes! It is. Really."
