"""End of turn that reads the transcript: does what was said so far sound finished?

The VAD ends a turn after `hangover_ms` of silence whatever was said. With the speculative transcript from
the early pause, an utterance that stops on a conjunction, a filler or a trailing "..." ("I was wondering
if ...", "and", "um") is a speaker thinking, not done: the turn waits longer (`vad.unfinished_extra_ms`)
so a mid-sentence pause does not split it. Pure and cheap (called once per pause).

A complete-looking sentence does not end the turn sooner: whisper punctuates "What is the weather" as a
question, so a 300-450 ms pause before "like in Paris?" would split the turn.
"""

from __future__ import annotations

import re

# Words a finished English sentence rarely ends on.
UNFINISHED_WORDS = frozenset(
    [
        "and",
        "or",
        "but",
        "so",
        "because",
        "if",
        "when",
        "while",
        "although",
        "though",
        "unless",
        "until",
        "than",
        "that",
        "which",
        "who",
        "whose",
        "whom",
        "where",
        "the",
        "a",
        "an",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "from",
        "by",
        "about",
        "into",
        "over",
        "under",
        "as",
        "like",
        "my",
        "your",
        "our",
        "their",
        "his",
        "her",
        "its",
        "um",
        "uh",
        "er",
        "erm",
        "hmm",
        "mm",
        "well",
    ]
)
# "that" closes a sentence as a pronoun ("Actually, never mind that.", "I like that.") and opens a clause after
# these ("I think that", "the problem is that", "so that"): held open only after one of them. The interrupting
# "Actually, never mind that." waited the extra 700 ms on every benchmark run (TTFA ~1.6 s).
_THAT_OPENS_TEXT = """
    think thought say said says know knew believe hope mean means meant guess wish feel felt realize realise
    suppose sure so such tell told wondering wonder heard hear read seems seem is was are were fact now except
    given provided noticed notice saw see show shows showed
"""
THAT_OPENS_AFTER = frozenset(_THAT_OPENS_TEXT.split())
# Unpunctuated (whisper tiny.en wrote "Actually never mind that"), a final "that" may still open a relative clause
# ("the movie that"): there it closes the sentence only after a verb that takes it as its object.
_THAT_OBJECT_TEXT = "mind like love hate want need do did does try stop fix change forget"
THAT_OBJECT_OF = frozenset(_THAT_OBJECT_TEXT.split())
# Words no sentence ends on, question mark or not ("What are you thinking of?" may end on "of").
NEVER_LAST = frozenset(["the", "a", "an", "my", "your", "our", "their"])
_WORD = re.compile(r"[a-z0-9']+")  # digits too: "in 10." ends on "10", not on "in"
TRAILED_MIN_WORDS = 3  # "Actually...", "Wait...": an opener trailing off, the rest is still to come
# A speaker looking for their next words: a filler, an article or a possessive, or a conjunction last, or a comma or
# a dash. No whole turn ends like that, so the pause is held open longer (`vad.thinking_extra_ms`, ~2.5 s of silence
# in all; LiveKit's agents wait up to 3 s (max_delay) when their turn model says the user is not done, pipecat's
# Smart Turn 3 s).
# The other unfinished endings (a preposition, "that", "so", a trailing "...") also close whole turns whisper heard
# a little wrong ("What are you looking for", "Actually..."): they only get `vad.unfinished_extra_ms`.
FILLERS = frozenset(["um", "uh", "er", "erm", "hmm", "mm"])
THINKING_LAST = FILLERS | NEVER_LAST | frozenset(["and", "or", "but", "because", "if", "unless", "although"])


def sounds_unfinished(text: str) -> bool:
    """True when the transcript so far ends like a speaker who is going on: a dash or a comma, a last word from
    UNFINISHED_WORDS (a "that." only after THAT_OPENS_AFTER, an unpunctuated "that" unless after THAT_OBJECT_OF),
    or a trailing "..." after such a word or after fewer than TRAILED_MIN_WORDS words ("Actually...")."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "…")):
        # Whisper writes "..." where the voice trails off: mid-sentence ("How far away is the...") and after a
        # whole command ("Actually, never mind that...", which then waited 700 ms more: TTFA 1.44 s). The words
        # before it tell them apart; such a turn is left to the hangover (pipeline.turn_end.ends_sentence).
        body = stripped.rstrip(".… ")
        return len(_WORD.findall(body.lower())) < TRAILED_MIN_WORDS or _ends_unfinished(body)
    if stripped.endswith(("-", "—", ",")):
        return True
    return _ends_unfinished(stripped)


def still_thinking(text: str) -> bool:
    """True when the transcript so far ends like a speaker looking for words (THINKING_LAST, a comma, a dash; also
    before a trailing "..."): a stronger case of `sounds_unfinished`, held open longer."""
    stripped = text.strip()
    if stripped.endswith(("-", "—", ",")):
        return True
    body = stripped.rstrip(".… ") if stripped.endswith(("...", "…")) else stripped
    words = _WORD.findall(body.lower())
    if not words:
        return False
    if words[-1] in NEVER_LAST:
        return True  # "What is the?" too
    return words[-1] in THINKING_LAST and not body.endswith(("?", "!"))


def _ends_unfinished(stripped: str) -> bool:
    """The last-word rules of `sounds_unfinished`."""
    words = _WORD.findall(stripped.lower())
    if words and words[-1] in NEVER_LAST:
        return True  # whisper may still write "What is the?"
    if not words or words[-1] not in UNFINISHED_WORDS or stripped.endswith(("?", "!")):
        return False
    before = words[-2] if len(words) > 1 else ""
    if words[-1] == "that" and stripped.endswith("."):
        return before in THAT_OPENS_AFTER  # "never mind that." is finished, "I think that." is not
    return not (words[-1] == "that" and before in THAT_OBJECT_OF)
