"""Scripted timelines (see test_session) for what the user said that a cut-off turn had not answered yet,
for what the history keeps of a reply, and for turns that fail in unexpected ways."""

from __future__ import annotations

import dataclasses

from tests.fakes import REPLY, FakeLLM, FakeTTS
from tests.unit.test_session import VAD, FailingLLM, after_play, run_timeline
from voicecli.config import TalkConfig
from voicecli.pipeline.session import APOLOGY

COUGH_S = 0.22  # over barge_in_min_ms (200), under min_utterance_ms (250): a barge-in, never an utterance
MONOLOGUE_VAD = dataclasses.replace(VAD, max_utterance_s=1.0)


def seconds_of(user_text: str) -> list[float]:
    """The lengths of the audio behind each FakeSTT transcript joined into `user_text`."""
    words = user_text.split()
    return [float(words[i + 2]) for i, w in enumerate(words) if w == "question"]


# ---- defect: a barge-in on a sound too short to be an utterance -----------------------------------------------
def test_a_cough_while_thinking_still_gets_the_question_answered_and_is_not_glued_to_the_next() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 1.9 <= t < 1.9 + COUGH_S or 10.0 <= t < 11.0, 18.0, llm_ttft=1.0)
    assert [e.data["during"] for e in rig.events if e.kind == "barge_in"] == ["thinking"]
    question = rig.stt.finished[0]
    first, second = rig.session.records
    assert first["user"] == question and first["assistant"] == REPLY  # asked again once the cough was dropped
    assert len(seconds_of(second["user"])) == 1 and seconds_of(second["user"])[0] < 1.6  # the later one alone
    assert second["assistant"] == REPLY
    assert [m.role for m in rig.history.messages()] == ["system", "user", "assistant", "user", "assistant"]


def test_a_cough_while_speaking_resumes_the_answer() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or after_play(r, 1, 0.6, COUGH_S, t), 14.0)
    assert [e.data["during"] for e in rig.events if e.kind == "barge_in"] == ["speaking"]
    cut, resumed = rig.session.records
    assert cut["interrupted"] is True
    assert resumed["user"] == cut["user"] and resumed["assistant"] == REPLY and resumed["interrupted"] is False
    # the history holds the question once, with the answer the user heard in full
    assert [(m.role, m.content) for m in rig.history.messages()][1:] == [("user", cut["user"]), ("assistant", REPLY)]


# ---- defect: a long monologue cut into pieces, then an early barge-in -----------------------------------------
def test_a_monologue_interrupted_before_its_answer_keeps_every_piece() -> None:
    # 2.4 s of speech cut at 1 s, then (while the LLM thinks) the user adds a second
    rig = run_timeline(lambda r, t: 0.2 <= t < 2.6 or 3.4 <= t < 4.4, 14.0, llm_ttft=1.0, vad=MONOLOGUE_VAD)
    assert [e.data["during"] for e in rig.events if e.kind == "barge_in"] == ["thinking"]
    [record] = rig.session.records
    pieces = seconds_of(record["user"])
    assert len(pieces) == 3 and pieces[0] >= 1.0  # the first pieces are still there ...
    assert sum(pieces) >= 2.4 + 1.0  # ... and with it everything the user said
    assert record["assistant"] == REPLY


# ---- defect: a prepared reply that can never be adopted ---------------------------------------------------------
def test_no_reply_is_prepared_while_a_cut_off_question_waits_to_be_joined() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.0 or 1.6 <= t < 2.4, 12.0, llm_ttft=1.0)
    assert rig.kinds().count("reply_prepared") == 1  # the first turn's, adopted before the barge-in
    assert len(rig.llm.prompts) == 2  # that one, and the joined question's own request
    assert rig.session.replies_wasted == 0 and "reply_wasted" not in rig.kinds()


def test_no_reply_is_prepared_while_monologue_pieces_wait_to_be_joined() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 2.6, 10.0, vad=MONOLOGUE_VAD)
    assert "reply_prepared" not in rig.kinds()
    assert len(rig.llm.prompts) == 1 and rig.session.replies_wasted == 0
    [record] = rig.session.records
    assert len(seconds_of(record["user"])) == 3 and record["assistant"] == REPLY


# ---- defect: the history keeps words the user never heard -------------------------------------------------------
class LinkLLM(FakeLLM):
    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        self.reply = "See the [guide](https://example.com/guide) first.\n\n```sh\nrm -rf build\n```\n\nThat is all."
        return super().chat(messages, max_tokens)


def test_the_history_keeps_no_url_or_code_that_was_not_spoken() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 9.0 <= t < 10.0, 20.0, llm_cls=LinkLLM)
    first, _ = rig.session.records
    assert first["interrupted"] is False and "guide" in first["assistant"]
    said = next(m for m in rig.llm.prompts[-1] if m.role == "assistant").content
    assert "https://" not in said and "rm -rf" not in said
    assert said == first["assistant"]  # exactly what was played


# ---- defect: an unexpected exception, a dead speaker ------------------------------------------------------------
class CrashingLLM(FailingLLM):
    """The first reply dies with a bug (not an EngineError) after a few deltas."""

    error = RuntimeError("a bug in the adapter")


def test_an_unexpected_exception_gets_the_apology_and_an_error_event() -> None:
    # No reply prepared at the pause: the turn's own reply is the one that dies (a prepared one that dies before
    # the turn is confirmed is only not adopted, and the turn asks again).
    no_prep = TalkConfig(prepare_reply=False)
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 7.0 <= t < 8.0, 16.0, llm_cls=CrashingLLM, talk=no_prep)
    first, second = rig.session.records
    assert first["assistant"].endswith(APOLOGY) and "a bug in the adapter" in first["error"]
    assert any(e.kind == "error" and "a bug in the adapter" in e.data["message"] for e in rig.events)
    assert second["assistant"] == REPLY


def test_a_prepared_reply_that_dies_is_asked_again_and_the_bug_is_logged() -> None:
    # The reply prepared at the pause dies before the turn is confirmed: the user still gets an answer, and the
    # bug is in the log, not swallowed.
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 12.0, llm_cls=CrashingLLM)
    [record] = rig.session.records
    assert record["assistant"] == REPLY and "error" not in record
    assert any(e.kind == "warning" and "a bug in the adapter" in e.data["message"] for e in rig.events)


class ManySentencesLLM(FakeLLM):
    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        self.reply = " ".join(f"Sentence number {i} is here." for i in range(12))
        return super().chat(messages, max_tokens)


class DyingTTS(FakeTTS):
    """The second clause kills the synthesiser with a bug; fixed sentences still work."""

    async def synthesize(self, text: str):  # type: ignore[no-untyped-def]
        if text.startswith("Sentence number 1 "):
            raise RuntimeError("the voice crashed")
        return await super().synthesize(text)


def test_a_dead_speaker_ends_the_reply_with_the_apology_instead_of_hanging() -> None:
    rig = run_timeline(
        lambda r, t: 0.2 <= t < 1.2, 14.0, llm_cls=ManySentencesLLM, tts_cls=DyingTTS, per_token=0.002, timeout=20
    )
    [record] = rig.session.records
    assert record["assistant"] == f"Sentence number 0 is here. {APOLOGY}"
    assert any(e.kind == "error" and "the voice crashed" in e.data["message"] for e in rig.events)
