"""Reply guard: keeps a weak model's runaway reply from reaching the speaker.

It sits between the clause chunker and TTS. Pure and synchronous: make one `ReplyGuard` per reply
and pass it every clause in order; each `check(clause)` returns a `Verdict`:

* `speak`: the pieces to synthesise, in order (usually the clause itself, possibly cleaned; the
  first spoken clause may come as two pieces, see `split_long_clause`); empty when the clause is
  dropped;
* `stop`: the reply ends here, after `speak` (cancel the LLM; later clauses are refused too);
* `reason`: "" when the clause passes untouched, else one of the reason constants below.

Rules, in the order they are checked:

* Unspeakable text (`UNSPEAKABLE`). Letters outside the voice's scripts (`scripts`, matched against
  the start of the Unicode character name: "LATIN" for an English voice) are removed, and so are
  digits other than 0-9 and symbols outside the Latin punctuation, currency, letter-like and math
  blocks (so CJK punctuation and emoji go too; the chunker's `normalise` already drops emoji and
  invisible characters, this only catches what reaches the guard another way). A Greek letter
  standing alone ("π", "α") stays: espeak, which Piper phonemizes with, reads it by name, whereas it
  reads katakana as "Japanese letter" per character (5 katakana: 4.2 s of audio) and Cyrillic
  letter by letter. A clause whose letters and digits are mostly such text is dropped;
  `max_dropped` dropped clauses stop the reply (a model that answers in another script would
  otherwise generate silence until max_tokens).
* Repetition (`REPETITION`). A clause of two or more words equal to an earlier clause of the reply
  (compared as lower-case words, punctuation ignored) stops the reply; a one-word clause may occur
  `SHORT_REPEATS` times ("No. No. No." is emphasis). A loop that changes its punctuation is caught
  as an `NGRAM`-word sequence occurring `NGRAM_REPEATS` times without overlap (five words, so
  parallel phrasing such as "you can use a pan, you can use a pot, ..." is not a loop). Digits are
  compared literally: a count ("1, 2, 3, 4, 5, 6, ...") is not a loop.
* Length cap (`LENGTH_CAP`). When a clause would take the spoken words past `max_words`: a clause
  that ends a sentence is spoken and ends the reply; a clause that would start a new sentence is not
  spoken (the reply already ended on a sentence boundary); a clause in the middle of a sentence is
  spoken with a full stop in place of its trailing comma and ends the reply. So a reply never exceeds
  `max_words` + one clause (the chunker caps clauses at its `max_words`).
* First clause cost (`SPLIT`). Piper synthesises a clause in one call, and the first audio waits for
  the whole first clause: about 4 ms per character with a medium voice on one core (a 147-character
  clause 0.63 s, 57 characters 0.30 s). A first spoken clause longer than `first_max_chars` is split
  at a word boundary (`split_long_clause`): the head is synthesised and playing while the tail
  synthesises. This belongs here rather than in the chunker because the chunker's clauses depend
  only on the text (never on the speed of the voice), and the guard knows which clause is the first
  one spoken. `SPLIT` is reported even if the clause was also cleaned.

`history_text()` is what was spoken (the text to store in the history); `degenerate` tells the
caller the reply was cut because it had gone wrong (repetition or unspeakable), not only long.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

CLEANED = "cleaned"  # characters the voice cannot say were removed; the rest is spoken
SPLIT = "split"  # the first clause is spoken as two pieces (it may also have been cleaned)
UNSPEAKABLE = "unspeakable"
REPETITION = "repetition"
LENGTH_CAP = "length cap"
DEGENERATE = frozenset({UNSPEAKABLE, REPETITION})

NGRAM = 5
NGRAM_REPEATS = 3
SHORT_CLAUSE_WORDS = 2
SHORT_REPEATS = 3
MIN_TAIL_CHARS = 30  # ~0.13 s of Piper medium synthesis on one core: less is not worth a split

# Non-letter characters an English voice reads (or skips) sensibly: ASCII, Latin-1, spacing modifier
# letters, general punctuation, super/subscripts, currency, letter-like symbols and number forms,
# math operators.
_SYMBOL_BLOCKS = (
    (0x0000, 0x00FF),
    (0x02B0, 0x02FF),
    (0x2000, 0x209F),
    (0x20A0, 0x20CF),
    (0x2100, 0x218F),
    (0x2200, 0x22FF),
)
_CJK_PUNCT = {"\u3001": ",", "\u3002": ".", "\uff61": ".", "\uff64": ","}  # 、 。 and their halfwidth forms
_SENTENCE_END = re.compile(r"[.!?…][\"')\]}»”’]*$")
_TRAILING_PAUSE = re.compile(r"\s*(?:[,;:]|\s[-–—]+)+$")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Words that lead into what follows: a split goes before them, never after.
_WEAK_END = frozenset(
    {"a", "an", "the", "of", "to", "and", "or", "but", "nor", "so", "in", "on", "at", "for", "with", "from"}
    | {"by", "as", "into", "than", "that", "which", "who", "whom", "whose", "when", "where", "while", "because"}
    | {"if", "my", "your", "our", "their", "its", "his", "her", "is", "are", "was", "were"}
)


@dataclass(frozen=True)
class Verdict:
    speak: tuple[str, ...] = ()
    stop: bool = False
    reason: str = ""

    @property
    def text(self) -> str:
        """The spoken text of this clause, in one string."""
        return " ".join(self.speak)

    @property
    def dropped(self) -> bool:
        return not self.speak and not self.stop


class ReplyGuard:
    """One reply's clauses -> what the voice says. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        max_words: int = 80,
        first_max_chars: int | None = 60,
        scripts: tuple[str, ...] = ("LATIN",),
        max_dropped: int = 2,
    ) -> None:
        if max_words < 1 or max_dropped < 1 or (first_max_chars is not None and first_max_chars < 1):
            raise ValueError(
                "ReplyGuard needs max_words >= 1, max_dropped >= 1 and first_max_chars >= 1 or None; got "
                f"max_words={max_words}, max_dropped={max_dropped}, first_max_chars={first_max_chars}"
            )
        self.max_words = max_words
        self.first_max_chars = first_max_chars
        self.scripts = tuple(s.upper() for s in scripts)
        self.max_dropped = max_dropped
        self.stop_reason: str | None = None
        self.words = 0  # spoken so far
        self.dropped_clauses = 0
        self._spoken: list[str] = []
        self._ended_sentence = True  # the spoken text so far ends on a sentence boundary
        self._clauses: dict[tuple[str, ...], int] = {}
        self._tokens: list[str] = []  # the spoken words, lower case, for the n-gram check
        self._grams: dict[tuple[str, ...], tuple[int, int]] = {}  # n-gram -> (count, last start)

    @property
    def degenerate(self) -> bool:
        """The reply was cut because it went wrong: keep only `history_text()`, never the raw LLM text."""
        return self.stop_reason in DEGENERATE

    def history_text(self) -> str:
        """Everything spoken (or passed to be spoken) in this reply, as one string."""
        return " ".join(self._spoken)

    def check(self, clause: str) -> Verdict:
        if self.stop_reason is not None:
            return Verdict(stop=True, reason=self.stop_reason)
        text, kept, removed = clean(clause, self.scripts)
        reason = "" if text == clause else CLEANED
        if removed > kept or not text:
            self.dropped_clauses += 1
            if self.dropped_clauses >= self.max_dropped:
                return self._stop(UNSPEAKABLE)
            return Verdict(reason=UNSPEAKABLE)
        tokens = _WORD.findall(text.lower())
        if self._repeats(tokens):
            return self._stop(REPETITION)
        n = len(text.split())
        stop = False
        if self.words + n > self.max_words:
            ends = _SENTENCE_END.search(text) is not None
            if not ends and self._ended_sentence and self._spoken:
                return self._stop(LENGTH_CAP)  # would start a sentence it cannot finish
            if not ends:
                text = _TRAILING_PAUSE.sub("", text) + "."
            stop, reason = True, LENGTH_CAP
        pieces = [text]
        if not self._spoken and self.first_max_chars is not None:
            pieces = split_long_clause(text, self.first_max_chars)
            if len(pieces) > 1 and not stop:
                reason = SPLIT
        self._spoken.append(text)
        self.words += n
        self._ended_sentence = _SENTENCE_END.search(text) is not None
        if stop:
            self.stop_reason = LENGTH_CAP
        return Verdict(speak=tuple(pieces), stop=stop, reason=reason)

    def _stop(self, reason: str) -> Verdict:
        self.stop_reason = reason
        return Verdict(stop=True, reason=reason)

    def _repeats(self, tokens: list[str]) -> bool:
        """Whether this clause repeats the reply (see module doc); records it when it does not."""
        if tokens:
            key = tuple(tokens)
            seen = self._clauses.get(key, 0)
            if seen and (len(key) >= SHORT_CLAUSE_WORDS or seen >= SHORT_REPEATS):
                return True
            self._clauses[key] = seen + 1
        first = len(self._tokens)
        self._tokens.extend(tokens)
        for start in range(max(0, first - NGRAM + 1), len(self._tokens) - NGRAM + 1):
            gram = tuple(self._tokens[start : start + NGRAM])
            count, last = self._grams.get(gram, (0, -NGRAM))
            if start >= last + NGRAM:  # occurrences may not overlap: "no no no no no" is one
                count += 1
                if count >= NGRAM_REPEATS:
                    return True
                self._grams[gram] = (count, start)
        return False


def clean(text: str, scripts: tuple[str, ...] = ("LATIN",)) -> tuple[str, int, int]:
    """`text` without what a voice for `scripts` cannot say -> (text, letters+digits kept, removed).

    Returns `text` itself when nothing was removed. Fullwidth ASCII forms become ASCII, the CJK
    comma and full stop become "," and "."; marks stay only on a kept letter.
    """
    out: list[str] = []
    kept = removed = 0
    changed = False
    after_letter = False
    for i, raw in enumerate(text):
        ch = _CJK_PUNCT.get(raw, raw)
        cp = ord(ch)
        if 0xFF01 <= cp <= 0xFF5E:  # fullwidth ! .. ~
            ch = chr(cp - 0xFEE0)
        changed |= ch != raw
        cat = unicodedata.category(ch)
        major = cat[0]
        if major == "M":  # a combining mark lives or dies with its letter
            if after_letter:
                out.append(ch)
            else:
                changed = True
            continue
        if ch.isspace():
            ok = True
        elif major == "L":
            name = unicodedata.name(ch, "")
            ok = name.startswith(scripts) or _in_symbol_blocks(cp) or (name.startswith("GREEK") and _alone(text, i))
        elif cat == "Nd":
            ok = "0" <= ch <= "9"
        else:
            ok = major in "NPSZ" and _in_symbol_blocks(cp)
        content = major in "LN"
        if ok:
            out.append(ch)
            kept += content
        else:
            changed = True
            removed += content
            if major != "C":
                out.append(" ")  # a dropped word or symbol still separates its neighbours
        after_letter = ok and major == "L"
    if not changed:
        return text, kept, removed
    return _tidy("".join(out)), kept, removed


def _alone(text: str, i: int) -> bool:
    """Whether text[i] is a word by itself: a lone Greek letter is a symbol espeak names ("pi", "alpha")."""
    return all(not text[j].isalpha() for j in (i - 1, i + 1) if 0 <= j < len(text))


def _in_symbol_blocks(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _SYMBOL_BLOCKS)


def _tidy(text: str) -> str:
    """Spacing and punctuation left behind by removed words: "Tokyo ( ) - ." -> "Tokyo."."""
    text = " ".join(text.split())
    for _ in range(3):
        before = text
        text = re.sub(r"[(\[{]\s*[)\]}]", "", text)  # emptied brackets
        text = re.sub(r"“\s*”|(?<!\S)\"\s*\"(?!\w)", "", text)  # emptied quotes
        text = re.sub(r"\s+([.,!?;:)\]}%])", r"\1", text)  # no space before closing punctuation
        text = re.sub(r"(?:\s[-–—])+(?=[.,!?;:]|$)", "", text)  # a dash left with nothing after it
        text = re.sub(r"[,;:]+(?=[.!?,;:])", "", text)  # ",." -> "."
        text = " ".join(text.split())
        if text == before:
            break
    return text.lstrip(".,;:!?-–— ")


def split_long_clause(text: str, max_chars: int, min_tail_chars: int = MIN_TAIL_CHARS) -> list[str]:
    """`text` as [head, tail] split at a word boundary with len(head) <= max_chars, or [text].

    The tail keeps at least `min_tail_chars` (a shorter one saves too little synthesis time to pay
    for the break in prosody) and the head at least two words. Within that, the head ends after
    punctuation when there is one, else the tail starts on a word that opens a phrase ("the", "with",
    "and", ...) when one is within the last four words, else the head does not end on one.
    """
    if len(text) <= max_chars:
        return [text]
    words = text.split(" ")
    n, length = 0, -1
    while (
        n < len(words)
        and length + 1 + len(words[n]) <= max_chars
        and len(text) - (length + 1 + len(words[n])) > min_tail_chars
    ):
        length += 1 + len(words[n])
        n += 1
    if n < 2:
        return [text]
    for k in range(n, 1, -1):
        if words[k - 1][-1:] in (",", ";", ":") or words[k - 1] in ("-", "–", "—"):
            return [" ".join(words[:k]), " ".join(words[k:])]
    for k in range(n, max(1, n - 4), -1):  # before a word that opens a phrase: "jumps over | the lazy dog"
        if words[k].lower() in _WEAK_END and words[k - 1].lower() not in _WEAK_END:
            return [" ".join(words[:k]), " ".join(words[k:])]
    while n > 2 and words[n - 1].lower() in _WEAK_END:
        n -= 1
    return [" ".join(words[:n]), " ".join(words[n:])]
