"""Whether a transcript is the assistant's own voice heard back through the room: the last line of defence
against a phantom turn, checked on the words once whisper has them.

The acoustic rules (pipeline.bargein: the echo canceller's prediction, the neural VAD) decide within ~100 ms
and must let a real barge-in through, so now and then the echo of a long reply passes them (an 81-word
SmolLM2 reply on the -10 dB rig: "It's all being spilled." became a turn, and was answered). Whisper
transcribes that echo almost word for word. A turn whose speech began while the reply was playing (a barge-in)
or within half a second of its end (the echo tail), and whose words are mostly one run of the reply's words
around that point, is the reply itself: it is dropped, never answered.

A user who talks over the reply says their own words; quoting three or more of the assistant's words in
order as most of what they say is rare, and costs them one repetition at worst. A transcript of one or two
words is the reply's only when they are exactly the words it was saying at the cut (the last few heard or
the next queued): an echo cut short after "Sure." must not be answered either. Pure, no audio.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CUT_WORD = re.compile(r"\b[\w']+-(?=\s|$)")  # whisper's "w-": a word the audio cut off, no word of either
# Words of the reply before the cut (or its end) the echo may be of: the heard tail, generously (the
# device's latency and the echo path put the mic behind the speaker by a few hundred ms, and a barge-in is
# confirmed up to ~1 s after its onset).
TAIL_WORDS = 30
# ... and after it: words queued at the speaker when it was cut, not yet counted as played.
AHEAD_WORDS = 8
MIN_MATCHED = 3  # fewer matched words than this decide only as a run at the cut (NEAR_WORDS)
NEAR_WORDS = 6  # words either side of the cut a one- or two-word echo must be found in, contiguous
MIN_SHARE = 0.6  # share of the transcript's words that one run of the reply's words must cover
RUN_WORDS = 4  # ... or this many of its words in a row, as the reply said them (whisper garbles the rest)
TAIL_SECONDS = 0.5  # after a reply ends, its echo tail may still start a turn this long (a user's quick
# follow-up often starts later, and shares words with the reply)


_ARTICLES = frozenset({"a", "an", "the"})
STEM_CHARS = 5  # words compared on their first 5 letters: whisper hears an echo's "being" as "beings"


def words(text: str) -> list[str]:
    """The words compared: lower case, cut-off words dropped, articles as one ("on the table" for "on a table"),
    long words by their first STEM_CHARS letters."""
    out = []
    for w in _WORD.findall(_CUT_WORD.sub(" ", text.lower().replace("’", "'"))):
        out.append("a" if w in _ARTICLES else w[:STEM_CHARS])
    return out


@dataclass(frozen=True)
class EchoReference:
    """The reply's words an utterance starting by `until` (monotonic seconds) may be an echo of."""

    words: tuple[str, ...]
    until: float
    cut: int = -1  # index in `words` where playback stopped (-1: the end)

    @classmethod
    def around(cls, full: str, heard: str, until: float) -> EchoReference:
        """The window of `full` (every clause queued) around the end of `heard` (what had played)."""
        all_words, cut = words(full), len(words(heard))
        start = max(0, cut - TAIL_WORDS)
        return cls(tuple(all_words[start : cut + AHEAD_WORDS]), until, cut - start)

    def near_cut(self) -> tuple[str, ...]:
        cut = len(self.words) if self.cut < 0 else self.cut
        return self.words[max(0, cut - NEAR_WORDS) : cut + NEAR_WORDS]

    def covers(self, speech_start: float) -> bool:
        return bool(self.words) and speech_start <= self.until


def _blocks(said: list[str], reference: EchoReference) -> list[difflib.Match]:
    return difflib.SequenceMatcher(None, said, list(reference.words), autojunk=False).get_matching_blocks()


def matched_words(transcript: str, reference: EchoReference) -> tuple[int, int]:
    """(words of the transcript found in order in the reference, words of the transcript)."""
    said = words(transcript)
    if not said:
        return 0, 0
    return sum(b.size for b in _blocks(said, reference)), len(said)


def is_own_voice(transcript: str, reference: EchoReference) -> bool:
    """Whether `transcript` is mostly a run of the reply's own words (see the module docstring)."""
    said = words(transcript)
    total = len(said)
    if total < MIN_MATCHED:
        near = reference.near_cut()
        return bool(said) and any(near[i : i + len(said)] == tuple(said) for i in range(len(near)))
    # One run of the reply's words, as it said them: an echo is a stretch of the reply (whisper garbles its edges);
    # a user's question shares scattered words ("What is the weather like today?" after "here is a quick answer:
    # the weather today ...": 4 of 6 in order, but no run longer than 2).
    run = max(b.size for b in _blocks(said, reference))
    return run >= RUN_WORDS or (run >= MIN_MATCHED and run >= MIN_SHARE * total)
