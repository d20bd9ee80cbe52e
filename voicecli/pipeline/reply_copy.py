"""Notice a reply that copies an earlier reply to another question (issue 18), and build a history it cannot copy.

Pure and synchronous. Small models (SmolLM2-135M) copy one of their own earlier replies from the history
whatever the new question is: fluent English that answers nothing. The measure (issue 18):

* a reply *copies* an earlier reply when their first `OPENING_WORDS` (8) words, as sets (lower-case,
  punctuation stripped), have a Jaccard index >= `COPY_JACCARD` (0.75), or when they open with the same
  `SAME_OPENING_WORDS` (5) words; an earlier reply to the *same* question (asked again) does not count;
* a reply *shares no content word* with a question that has 2 or more (`content_words`, a small stop list).

Deciding early: `check_opening` looks at the words streamed so far and answers COPY, FRESH or UNDECIDED. It
decides as soon as the outcome can no longer change (bounds on the Jaccard index of the 8-word opening), so
most replies are decided within their first few words. At the end of the first clause, `clause_end=True`
forces a decision (a clause whose words match the same number of opening words of an earlier reply is a
copy), so the pipeline never has to speak a clause it has not judged.

Answering afresh: `uncopyable` turns the prompt into one the copy cannot come from (the echoed exchanges
dropped, at most a few recent exchanges kept, interrupted replies shown as plain heard words) for one
regeneration; `exchanges` reads the (question, reply) pairs back out of a prompt.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from voicecli.engines.base import ChatMessage

OPENING_WORDS = 8
COPY_JACCARD = 0.75
SAME_OPENING_WORDS = 5
CLAUSE_MIN_WORDS = 3  # a first clause this short is judged on its own words at its end
ELLIPSIS = "..."

# What History appends to a reply cut off by barge-in (pipeline.history.INTERRUPTED_SUFFIX) and the other
# interrupted-reply markers a history view may use; stripped before comparing replies.
_MARKERS = ("[interrupted by the user]", "[interrupted]", ELLIPSIS, "…")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")

# A small English stop list: function words, plus the words of talk-overs and instructions ("wait, stop",
# "explain in one sentence"), which say how to answer, not what about.
_STOP_TEXT = """
    a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
    during each few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here
    here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself
    let's me more most mustn't my myself no nor not of off on once only or other ought our ours ourselves out
    over own same shan't she she'd she'll she's should shouldn't so some such than that that's the their
    theirs them themselves then there there's these they they'd they'll they're they've this those through
    to too under until up very was wasn't we we'd we'll we're we've were weren't what what's when when's where
    where's which while who who's whom why why's will with won't would wouldn't you you'd you'll you're you've
    your yours yourself yourselves just now really actually well oh um uh yeah yes ok okay right sure please
    thanks thank sorry hello hi hey wait stop hold enough go on fine good great alright anyway
    explain tell describe say give sentence sentences word words one two three short briefly brief quick
    quickly simple simply know think mean means like get got make makes made thing things way
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


def words(text: str) -> list[str]:
    """The words of `text`: lower-case, punctuation stripped ("Earth's" stays one word)."""
    return _WORD.findall(text.lower().replace("’", "'"))


def opening(text: str, n: int = OPENING_WORDS) -> list[str]:
    return words(text)[:n]


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def _stem(word: str) -> str:
    """A light suffix strip, so "spiders" meets "spider" and "forms" meets "form"."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """The words of `text` that carry its subject: stop words and numbers dropped, plurals folded."""
    return {_stem(w) for w in words(text) if w not in STOP_WORDS and not w.isdigit() and len(w) > 1}


def shares_content_word(question: str, reply: str, min_question_words: int = 2) -> bool | None:
    """Whether the reply shares a content word with the question; None when the question has fewer than
    `min_question_words` content words (a talk-over, a greeting: not measured)."""
    asked = content_words(question)
    if len(asked) < min_question_words:
        return None
    return bool(asked & content_words(reply))


def same_question(a: str, b: str) -> bool:
    """The same question asked again (a reply may then repeat the earlier one)."""
    wa, wb = words(a), words(b)
    if wa == wb:
        return True
    ca, cb = content_words(a), content_words(b)
    return bool(ca) and ca == cb


def strip_marker(reply: str) -> str:
    """A history reply without an interrupted-reply marker at its end."""
    text = reply.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in _MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


@dataclass(frozen=True)
class Exchange:
    question: str
    reply: str  # as the history keeps it (the heard words of an interrupted reply)
    interrupted: bool = False


def exchanges(messages: Sequence[ChatMessage]) -> list[Exchange]:
    """The (question, reply) pairs of a prompt (system, user, assistant, ..., user), oldest first; the
    trailing question without a reply is left out. Interrupted-reply markers are stripped from the replies."""
    out: list[Exchange] = []
    question: str | None = None
    for m in messages:
        if m.role == "user":
            question = m.content
        elif m.role == "assistant" and question is not None:
            reply = strip_marker(m.content)
            out.append(Exchange(question, reply, interrupted=reply != m.content.rstrip()))
            question = None
    return out


class Verdict(enum.Enum):
    COPY = "copy"
    FRESH = "fresh"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class CopyCheck:
    verdict: Verdict
    copied: int | None = None  # index (into `earlier`) of the exchange whose reply is copied
    words: int = 0  # words of the reply the verdict was reached on

    @property
    def copy(self) -> bool:
        return self.verdict is Verdict.COPY


def check_opening(
    so_far: str,
    question: str,
    earlier: Sequence[Exchange],
    *,
    final: bool = False,
    clause_end: bool = False,
) -> CopyCheck:
    """Whether the reply being generated (`so_far`, the text streamed until now) copies an earlier reply to
    another question.

    COPY: whatever follows, the 8-word opening copies one (or it opens with the same 5 words; or, at
    `clause_end`, the first clause's words match the same number of an earlier reply's opening words).
    FRESH: whatever follows, it copies none. UNDECIDED: the next words decide (never returned when `final`
    (the reply is complete) or `clause_end` (the first clause is complete and about to be spoken)). Before
    either, a last word not yet followed by a space is not counted (the next delta may continue it)."""
    got = opening(so_far if final or clause_end or so_far[-1:].isspace() else _complete_words(so_far))
    k = len(got)
    candidates = [
        (i, opening(ex.reply)) for i, ex in enumerate(earlier) if ex.reply and not same_question(question, ex.question)
    ]
    if k == 0:
        return CopyCheck(Verdict.FRESH if final or clause_end else Verdict.UNDECIDED)
    complete = final or k >= OPENING_WORDS
    r = 0 if complete else OPENING_WORDS - k
    a = set(got)
    open_ = False
    for i, theirs in candidates:
        b = set(theirs)
        both = len(a & b)
        union = len(a | b)
        if k >= SAME_OPENING_WORDS and got[:SAME_OPENING_WORDS] == theirs[:SAME_OPENING_WORDS]:
            return CopyCheck(Verdict.COPY, i, k)
        if both / (union + r) >= COPY_JACCARD:  # a copy even if every word still to come is new
            return CopyCheck(Verdict.COPY, i, k)
        if complete:
            continue
        if clause_end:
            if k >= CLAUSE_MIN_WORDS and jaccard(got, theirs[:k]) >= COPY_JACCARD:
                return CopyCheck(Verdict.COPY, i, k)
            continue
        could_copy = (both + min(r, len(b - a))) / union >= COPY_JACCARD
        could_open_same = k < SAME_OPENING_WORDS <= len(theirs) and got == theirs[:k]
        if could_copy or could_open_same:
            open_ = True
    if open_:
        return CopyCheck(Verdict.UNDECIDED, None, k)
    return CopyCheck(Verdict.FRESH, None, k)


def _complete_words(text: str) -> str:
    """`text` without its last word, which may still be growing (the next delta may continue it)."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[: cut + 1] if cut >= 0 else ""


def copies(reply: str, question: str, earlier: Sequence[Exchange]) -> int | None:
    """The measure on a complete reply: the index of the earlier exchange whose reply it copies, or None."""
    return check_opening(reply, question, earlier, final=True).copied


def uncopyable(
    messages: Sequence[ChatMessage],
    attempt: str,
    *,
    keep_exchanges: int = 2,
    interrupted_as: str = "",
) -> list[ChatMessage]:
    """A prompt for one regeneration after `attempt` (the copying words so far) was thrown away.

    From `messages` (system, user, assistant, ..., user): every exchange whose reply `attempt` copies is
    dropped, and so is every other reply with the same opening (a reply copied before is copied again);
    of the rest only the last `keep_exchanges` are kept (0 = the system prompt and the question alone); an
    interrupted reply is shown as its heard words + `interrupted_as` (its marker dropped). The system prompt
    and the latest user message are kept as they are."""
    if not messages or messages[-1].role != "user":
        raise ValueError("uncopyable() needs a prompt that ends with the user's message")
    head = [m for m in messages[:1] if m.role == "system"]
    question = messages[-1].content
    pairs = exchanges(messages[len(head) : -1])
    echoed = {i for i, ex in enumerate(pairs) if copies(attempt, question, [ex]) is not None}
    # Replies that copy an echoed one (the same opening spread through the history) go too.
    echoed |= {
        i
        for i, ex in enumerate(pairs)
        if any(copies(ex.reply, ex.question, [pairs[j]]) is not None for j in echoed if j != i)
    }
    kept = [ex for i, ex in enumerate(pairs) if i not in echoed]
    kept = kept[len(kept) - keep_exchanges :] if keep_exchanges > 0 else []
    out = list(head)
    for ex in kept:
        reply = ex.reply + interrupted_as if ex.interrupted else ex.reply
        out += [ChatMessage("user", ex.question), ChatMessage("assistant", reply)]
    out.append(ChatMessage("user", question))
    return out
