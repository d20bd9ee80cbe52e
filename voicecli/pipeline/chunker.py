"""LLM text deltas -> speakable clauses, as early as prosody allows.

Two small streaming transducers, both pure and synchronous:

* `_Normaliser` turns raw (markdown-ish) text into plain speakable text: markup stripped, code
  blocks replaced by a spoken mention, emoji dropped, whitespace collapsed to single spaces, and a
  newline kept as a hard break (end of a paragraph, list item or heading).
* `_Splitter` cuts that text into clauses at sentence ends, at `, ; :` and dashes once the clause
  carries enough words, and at a word limit.

Each decision waits until enough text has arrived to be certain (a trailing "." may be "3.14"), so
the clauses do not depend on how the text was cut into deltas, and joining the clauses with single
spaces always gives `normalise(text)`. Splits only ever happen at whitespace. Two opt-in exceptions,
the reply's: `first_eager` ends the first clause on its own punctuation ("Sure,") a token sooner, and
`first_opener` ends it on a standalone opening word ("Sure", voicecli.openers) before its punctuation.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from voicecli.openers import is_standalone_opener

CODE_MENTION = "There is a code example on screen."
# A run of non-space characters longer than this is broken with a space: nothing that long is a
# speakable word, and it keeps memory bounded for output without any whitespace.
LONG_WORD_CHARS = 100
_LINK_TEXT_MAX = 200
_LINK_URL_MAX = 500
_RULE_MAX = 80  # chars of "---|---" a line may hold before we decide it is a rule without seeing its end

_CLOSERS = "\"')]}»”’"
_OPENERS = "\"'([{«“‘"
_DASHES = ("-", "--", "—", "–")
_TIGHT = frozenset(".,!?;:…")
_RULE_CHARS = frozenset("-*_=+|: \t")
_ESCAPABLE = frozenset("\\`*_{}[]()#+-.!|~<>")
# Abbreviations that never end a sentence (compared lower-case, final "." removed).
_NEVER_END = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "mt", "vs", "e.g", "i.e", "cf", "viz", "approx", "fig"}
    | {"rev", "hon", "gen", "col", "capt", "lt", "sgt", "sen", "rep", "gov", "pres"}
)
_INITIAL = re.compile(r"[A-Za-z]\.")
_DOTTED = re.compile(r"(?:[A-Za-z]\.){2,}")  # U.S. e.g. i.e. a.m. p.m.
_ORDERED = re.compile(r"\d{1,3}[.)]")

_LINE_START, _INLINE, _CODE_LINE_START, _CODE_SKIP, _SKIP_LINE = range(5)


def _is_pictograph(ch: str) -> bool:
    """Emoji and other pictographic symbols (spoken as nothing)."""
    cp = ord(ch)
    if 0x1F000 <= cp <= 0x1FAFF or 0x2600 <= cp <= 0x27BF or 0x2B00 <= cp <= 0x2BFF:
        return True
    if 0x2190 <= cp <= 0x21FF or 0x27F0 <= cp <= 0x27FF or 0x2900 <= cp <= 0x297F:  # arrows
        return True
    return cp >= 0x2190 and unicodedata.category(ch) == "So"


def _is_invisible(ch: str) -> bool:
    """Control, format (ZWJ, variation selectors), surrogate, private and unassigned chars."""
    cp = ord(ch)
    if 0xFE00 <= cp <= 0xFE0F or 0xE0000 <= cp <= 0xE007F or cp == 0x20E3:
        return True
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")


class _Normaliser:
    """Streaming markdown -> plain text. Output: single spaces, "\\n" for hard breaks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pending = ""
        self._mode = _LINE_START
        self._fence = ""
        self._prev = " "  # previous raw char on this line (flanking rules for * and _)
        self._space = False
        self._brk = False
        self._started = False
        self._symbol_gap = False  # a pictograph was dropped since the last emitted char
        self._run = 0
        self._out: list[str] = []

    def feed(self, text: str) -> str:
        self._pending += text
        return self._drain(final=False)

    def finish(self) -> str:
        out = self._drain(final=True)
        self.reset()
        return out

    # -- output ---------------------------------------------------------------------------
    def _emit(self, ch: str) -> None:
        if ch.isspace():
            self._space = True
            return
        # "done 👍!" -> "done!": a space left by a dropped symbol does not go before punctuation.
        if self._space and self._symbol_gap and not self._brk and ch in _TIGHT:
            self._space = False
        if self._started and (self._brk or self._space or self._run >= LONG_WORD_CHARS):
            self._out.append("\n" if self._brk else " ")
            self._run = 0
        self._brk = self._space = self._symbol_gap = False
        self._out.append(ch)
        self._started = True
        self._run += 1

    def _emit_text(self, text: str) -> None:
        for ch in text:
            self._emit(ch)

    def _break(self) -> None:
        self._brk = True

    # -- the loop -------------------------------------------------------------------------
    def _drain(self, final: bool) -> str:
        p = self._pending
        i = 0
        while i < len(p):
            if self._mode == _LINE_START:
                step = self._line_start(p, i, final)
            elif self._mode == _INLINE:
                step = self._inline(p, i, final)
            elif self._mode == _CODE_LINE_START:
                step = self._code_line_start(p, i, final)
            else:  # _CODE_SKIP or _SKIP_LINE: drop the rest of the line
                k = p.find("\n", i)
                if k < 0:
                    step = len(p)
                else:
                    step = k + 1
                    if self._mode == _SKIP_LINE:
                        self._break()
                        self._mode = _LINE_START
                    else:
                        self._mode = _CODE_LINE_START
            if step is None:  # need more text to decide
                break
            if isinstance(step, str):  # a link was rewritten to its text: rescan
                p = step
                continue
            i = step
        self._pending = p[i:]
        out = "".join(self._out)
        self._out.clear()
        return out

    def _line_start(self, p: str, i: int, final: bool) -> int | str | None:
        c = p[i]
        if c == "\n":
            self._break()
            return i + 1
        if c.isspace():
            return i + 1
        k = p.find("\n", i)
        complete = k >= 0 or final
        line = p[i:k] if k >= 0 else p[i:]
        if c in "`~":
            if len(line) < 3 and not complete:
                return None
            if line.startswith(("```", "~~~")):
                self._fence = line[:3]
                self._break()
                self._emit_text(CODE_MENTION)
                self._break()
                self._mode = _CODE_SKIP
                return i + 3
        if c in _RULE_CHARS:
            rule = True
            for ch in line[:_RULE_MAX]:
                if ch not in _RULE_CHARS:
                    rule = False
                    break
            if rule:
                if len(line) >= _RULE_MAX:
                    self._mode = _SKIP_LINE
                    return i
                if not complete:
                    return None
                return i + len(line)  # drop the rule; its newline makes the break
        if c == "#":
            n = len(line) - len(line.lstrip("#"))
            if n == len(line) and not complete:
                return None
            if n <= 6 and (n == len(line) or line[n].isspace()):
                self._mode = _INLINE
                self._prev = " "
                return i + n
        if c == ">":
            return i + 1
        if c in "-*+":
            if len(line) < 2 and not complete:
                return None
            if len(line) >= 2 and line[1].isspace():
                return self._enter_inline(i + 2)
        if c.isdigit():
            m = _ORDERED.match(line)
            if m is None and len(line) < 5 and not complete and line.isdigit():
                return None
            if m is not None:
                end = m.end()
                if end == len(line) and not complete:
                    return None
                if end == len(line) or line[end].isspace():
                    return self._enter_inline(i + end)
        return self._enter_inline(i)

    def _enter_inline(self, i: int) -> int:
        self._mode = _INLINE
        self._prev = " "
        return i

    def _code_line_start(self, p: str, i: int, final: bool) -> int | None:
        c = p[i]
        if c.isspace():
            return i + 1
        if len(p) - i < 3 and not final and "\n" not in p[i:]:
            return None
        self._mode = _SKIP_LINE if p.startswith(self._fence, i) else _CODE_SKIP
        return i + 3 if self._mode == _SKIP_LINE else i

    def _inline(self, p: str, i: int, final: bool) -> int | str | None:
        c = p[i]
        if c == "\n":
            self._break()
            self._mode = _LINE_START
            return i + 1
        if c in "*_~":
            j = i
            while j < len(p) and p[j] == c:
                j += 1
            if j == len(p) and not final:
                return None
            nxt = p[j] if j < len(p) else " "
            run = j - i
            if c == "*":
                keep = run == 1 and (
                    (self._prev.isspace() and nxt.isspace()) or (self._prev.isdigit() and nxt.isdigit())
                )
            elif c == "_":
                keep = run == 1 and self._prev.isalnum() and nxt.isalnum()
            else:
                keep = run == 1
            if keep:
                self._emit(c)
            self._prev = c
            return j
        if c == "[" or (c == "!" and i + 1 < len(p) and p[i + 1] == "["):
            start = i + 1 if c == "!" else i
            link = _match_link(p, start, final)
            if link is None:
                return None
            if link:
                text, end = link
                return p[:i] + text + p[end:]
        elif c == "!" and i + 1 == len(p) and not final:
            return None  # may be an image "![alt](src)"
        if c == "\\":
            if i + 1 == len(p) and not final:
                return None
            if i + 1 < len(p) and p[i + 1] in _ESCAPABLE:
                self._emit(p[i + 1])
                self._prev = p[i + 1]
                return i + 2
        if c == "`":
            pass  # inline code: keep its text, drop the backticks
        elif c == "|" or c.isspace():
            self._emit(" ")
        elif _is_pictograph(c):
            self._symbol_gap = True
            self._emit(" ")
        elif not _is_invisible(c):
            self._emit(c)
        self._prev = c
        return i + 1


def _match_link(p: str, i: int, final: bool) -> tuple[str, int] | tuple[()] | None:
    """At p[i] == "[": (text, end) for "[text](url)", () if it is not a link, None if undecided."""
    j = i + 1
    limit = min(len(p), j + _LINK_TEXT_MAX + 1)
    while j < limit and p[j] not in "[]\n":
        j += 1
    if j == len(p):
        return None if not final else ()
    if j == limit or p[j] != "]":
        return ()
    text = p[i + 1 : j]
    if j + 1 == len(p):
        return None if not final else ()
    if p[j + 1] != "(":
        return ()
    k = j + 2
    limit = min(len(p), k + _LINK_URL_MAX + 1)
    while k < limit and p[k] != ")" and not p[k].isspace():
        k += 1
    if k == len(p):
        return None if not final else ()
    if k == limit or p[k] != ")":
        return ()
    return text, k + 1


def _is_abbreviation(core: str) -> bool:
    word = core.lstrip(_OPENERS)
    return (
        word[:-1].lower() in _NEVER_END or _INITIAL.fullmatch(word) is not None or _DOTTED.fullmatch(word) is not None
    )


def _ends_for_sure(token: str) -> bool:
    """Whether `token` ends a clause whatever comes next: a plain word followed by ", ; ! ?" or, when it is no
    abbreviation, "." ("Sure," "Paris." but not "3.", "Dr.", "U.S.", "well..", "e.g", "http:")."""
    word = token.lstrip(_OPENERS)
    if len(word) < 2 or not all(c.isalpha() or c == "'" for c in word[:-1]):
        return False
    last = word[-1]
    return last in ",;!?" or (last == "." and not _is_abbreviation(word))


def _ends_clause(token: str, nxt: str, words: int, need: int) -> bool:
    """Whether a clause may end after `token`, given the first char of the next token."""
    core = token.rstrip(_CLOSERS)
    if not core:
        return False
    last = core[-1]
    if last in "!?":
        return True
    if last == "…" or core.endswith("..."):
        # A pause, not a full stop: "well... maybe" goes on; "I was thinking... Maybe" may split.
        return not nxt.islower() and words >= need
    if last == ".":
        return not nxt.islower() and not _is_abbreviation(core)
    if last in ",;:" or core in _DASHES or last in "—–":
        return words >= need
    return False


# Words a first clause may be cut before once it is `first_soft_words` long, when the LLM has not reached a
# comma yet: conjunctions and relative words that open a new part of the sentence ("The moon is a very
# special | and mysterious object"). Piper speaks the two parts as two phrases: a slight break in the
# prosody, for first audio several tokens and a shorter synthesis sooner.
SOFT_BREAK_BEFORE = frozenset(
    {"and", "but", "or", "so", "because", "which", "who", "whose", "while", "when", "where", "whereas", "with",
     "although", "though", "since", "until", "unless", "if"}
)  # fmt: skip


class _Splitter:
    """Plain text (single spaces, "\\n" breaks) -> clauses."""

    def __init__(
        self,
        min_clause_words: int,
        max_words: int,
        first_min_words: int,
        first_soft_words: int | None = None,
        first_eager: bool = False,
        first_opener: bool = False,
    ) -> None:
        self._min = min_clause_words
        self._max = max_words
        self._first_min = first_min_words
        self._first_soft = first_soft_words
        self._first_eager = first_eager
        self._first_opener = first_opener
        self.reset()

    def reset(self) -> None:
        self._pending = ""
        self._tokens: list[str] = []
        self._emitted = False
        self._opener = ""  # the opening word spoken on its own, until the text after it shows how it goes on

    def feed(self, text: str, final: bool = False) -> list[str]:
        if self._opener and text:
            # "Sure" + "ly": the word went on after it was spoken; the next clause says it whole ("Surely").
            if not self._pending and (text[0].isalnum() or text[0] == "'"):
                text = self._opener + text
            self._opener = ""
        self._pending += text
        p = self._pending
        out: list[str] = []
        i = 0
        while True:
            k = _next_sep(p, i)
            if k < 0 or k + 1 >= len(p):  # no separator yet, or no char after it to look at
                break
            token, sep, nxt = p[i:k], p[k], p[k + 1]
            i = k + 1
            if (
                token
                and not self._emitted
                and self._first_soft is not None
                and len(self._tokens) >= self._first_soft
                and token.lower() in SOFT_BREAK_BEFORE
            ):
                self._flush(out, force=False)  # the first clause ends before this word
            if token:
                self._tokens.append(token)
            need = self._min if self._emitted else self._first_min
            if sep == "\n" or _ends_clause(token, nxt, len(self._tokens), need):
                self._flush(out, force=False)
            if len(self._tokens) >= self._max:
                self._flush(out, force=True)
        self._pending = p[i:]
        if (self._first_eager or self._first_opener) and not self._emitted and not final:
            self._end_first_now(out)
        if final:
            rest = self._pending.split()
            self._pending = ""
            for token in rest:
                self._tokens.append(token)
                if len(self._tokens) >= self._max:
                    self._flush(out, force=True)
            self._flush(out, force=True)
            self.reset()
        return out

    def _end_first_now(self, out: list[str]) -> None:
        """`first_eager`: the first clause ends on its last token's punctuation ("Sure,") without waiting for
        the next token to show what follows: one LLM token sooner (~40 ms with the 0.5B model on 2 cores). The
        price: a closing quote or bracket, or a mark glued on right after that punctuation ("Sure,,"), starts the
        next clause instead (spoken the same)."""
        token = self._pending.rstrip(" \n")
        whole_word = token and not any(c in " \n" for c in token)
        if self._first_opener and whole_word and not self._tokens and is_standalone_opener(token):
            # `first_opener`: "Sure" before its comma, one more token sooner. What follows it is glued on
            # ("," starts the next clause) or, if the word went on, repeated (`feed`).
            self._tokens.append(token)
            self._pending = ""
            self._flush(out, force=False)
            self._opener = token
            return
        if self._first_eager and whole_word and _ends_for_sure(token) and len(self._tokens) + 1 >= self._first_min:
            self._tokens.append(token)  # letters in it: _flush always emits
            self._pending = ""
            self._flush(out, force=False)

    @property
    def tokens(self) -> list[str]:
        return self._tokens

    def cut(self) -> list[str]:
        """The complete words waiting for a clause end, as a clause now (the word being written stays)."""
        out: list[str] = []
        if any(ch.isalnum() for tok in self._tokens for ch in tok):
            self._flush(out, force=True)
        return out

    def _flush(self, out: list[str], force: bool) -> None:
        clause = " ".join(self._tokens)
        # A clause with nothing to say ("...", "—") waits to lead the next one.
        if not clause or (not force and not any(ch.isalnum() for ch in clause)):
            return
        out.append(clause)
        self._tokens = []
        self._emitted = True


def _next_sep(p: str, i: int) -> int:
    a = p.find(" ", i)
    b = p.find("\n", i)
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


class ClauseChunker:
    """Push LLM text deltas, get speakable clauses as soon as they are certain.

    `push` returns the clauses completed by this delta; `finish` flushes the rest and makes the
    chunker ready for the next reply; `reset` drops everything (barge-in).
    """

    def __init__(
        self,
        *,
        min_clause_words: int = 4,
        max_words: int = 25,
        first_min_words: int = 2,
        first_soft_words: int | None = None,
        first_eager: bool = False,
        first_opener: bool = False,
    ) -> None:
        """first_soft_words: the first clause may also end before a SOFT_BREAK_BEFORE word once it has this
        many words (None: only at punctuation or max_words). first_eager: the first clause ends as soon as
        its punctuation arrives (see `_Splitter._end_first_now`), so its clauses may depend on where the
        deltas were cut. first_opener: a reply's standalone opening word ("Sure", voicecli.openers) is the
        first clause as soon as it is written; the punctuation after it then opens the next clause ("Sure" |
        ", here is"), and a word that went on is said again whole ("Sure" | "Surely, ...")."""
        if min(min_clause_words, max_words, first_min_words) < 1 or max(min_clause_words, first_min_words) > max_words:
            raise ValueError(
                "ClauseChunker needs 1 <= min_clause_words, first_min_words <= max_words; got "
                f"min_clause_words={min_clause_words}, first_min_words={first_min_words}, "
                f"max_words={max_words}"
            )
        self.max_words = max_words
        self._norm = _Normaliser()
        self._split = _Splitter(
            min_clause_words, max_words, first_min_words, first_soft_words, first_eager, first_opener
        )

    def push(self, text: str) -> list[str]:
        return self._split.feed(self._norm.feed(text))

    def finish(self) -> list[str]:
        return self._split.feed(self._norm.finish(), final=True)

    def waiting_chars(self) -> int:
        """Characters of the complete words held for the clause being written."""
        tokens = self._split.tokens
        return sum(len(t) for t in tokens) + max(0, len(tokens) - 1)

    def cut(self) -> list[str]:
        """The words complete so far as a clause of their own, without waiting for a clause end: the speaker
        is about to run dry (pipeline.reply). Joining all clauses still gives `normalise(text)`."""
        return self._split.cut()

    def reset(self) -> None:
        self._norm.reset()
        self._split.reset()


def normalise(text: str) -> str:
    """The whole text as the chunker speaks it: markup stripped, whitespace collapsed.

    `" ".join(clauses)` from a ClauseChunker fed `text` in any pieces equals `normalise(text)`.
    """
    norm = _Normaliser()
    return " ".join((norm.feed(text) + norm.finish()).split())


def split_clauses(text: str, **options: Any) -> list[str]:
    """All clauses of a complete text (a convenience for tests and benchmarks)."""
    chunker = ClauseChunker(**options)
    return chunker.push(text) + chunker.finish()
