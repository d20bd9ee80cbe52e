"""Pipeline events: what every stage reports, with its turn id and a time on one clock.

All times are seconds on time.monotonic(); audio-callback times (ADC/DAC) are mapped onto it by the audio
layer. The same records go to the live view, the `--events` JSONL file and the benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

EventKind = Literal[
    "session_start",
    "state",  # data: state = listening | hearing | thinking | speaking
    "speech_start",  # user voice onset (t = first voiced frame)
    "pause",  # early pause: speculative STT starts
    "prefill",  # while the user spoke: the LLM prefilled their stable words so far; data: text, tokens, stt_s
    "tail",  # the user went quiet: their words so far are transcribed at once; data: worker (partials | main)
    "tail_overdue",  # the pause stopped waiting for the tail partial and transcribes on its own as well
    "resume",  # user spoke again after a pause: speculation discarded
    "discarded",  # a blip shorter than the minimum utterance
    "turn_resumed",  # a barge-in's sound was discarded: the question it cut off is asked again; data: text
    "speech_end",  # t = end of the last voiced frame (ADC clock)
    "eou",  # end of user turn confirmed
    "stt_done",  # data: text, is_speech, compute_s, speculative
    "stt_rejected",  # no speech, or (reason "own voice") the reply's own words heard back; data: text
    # The semantic end of turn's verdict at a pause (pipeline.turn_end); data: verdict (complete: ended at the
    # pause | incomplete: held open longer | fallback: the hangover decides), by (words | llm | vad), p (the LLM's
    # end-of-turn probability or None), late (came after the turn had ended), cost_ms (from the pause), judge_ms
    # (the judge alone), text
    "end_of_turn",
    "reply_prepared",  # the LLM was started on the speculative transcript during the hangover; data: text
    "reply_wasted",  # a prepared reply was thrown away; data: reason
    "llm_first_token",
    "llm_delta",  # data: text
    "llm_done",  # data: prompt_tokens, prompt_tokens_evaluated, completion_tokens, tokens_per_s
    "first_clause",  # data: text
    "clause",  # data: text, index
    "clause_early",  # the speaker was about to run dry: the words so far were cut as a clause; data: text, words
    "clause_dropped",  # data: text, reason (the reply guard: text the voice cannot say)
    "reply_cut",  # data: reason (repetition | unspeakable | length cap), words, degenerate
    "reply_regenerated",  # the reply opened by copying an earlier one: asked afresh; data: copied, attempt
    "tts_first_audio",
    "tts_clause",  # data: index, audio_s, compute_s
    "play_start",  # t = DAC time of the reply's first sample
    "play_end",
    "barge_in",  # t = decision time; data: onset, during; echo mode: the verdict, asked_ms, refused
    "turn_end",  # data: the turn summary (see metrics.TurnMetrics)
    "warning",  # data: message
    "error",  # data: message
    "mic_level",  # data: dbfs (sampled, not every frame)
    "session_end",
    "audio_status",  # the streams closed; data: output_underflows, input_overflows (device xruns, PortAudio status)
]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    t: float
    turn_id: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "t": round(self.t, 6), "turn": self.turn_id, **self.data})


class EventLog:
    """Appends events as JSON lines; flushed per line so a crash keeps everything written so far."""

    def __init__(self, path: Path, *, skip: frozenset[str] = frozenset({"mic_level", "llm_delta"})) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = path.open("a", encoding="utf-8")
        self._skip = skip

    def __call__(self, event: Event) -> None:
        if self._fh is None or event.kind in self._skip:
            return
        self._fh.write(event.to_json() + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
