"""Piper TTS adapter against generated voices, through the real piper-tts and onnxruntime."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from voicecli.audio.format import rms_dbfs
from voicecli.engines.base import Speech
from voicecli.engines.tts import TRIM_KEEP_S, PiperTTS, speakable
from voicecli.errors import ConfigError, EngineError, ModelError
from voicecli.testmodels import piper as piper_gen

pytestmark = pytest.mark.engines

VOICE_RATE = 22050
CLAUSE = "Hello there, how are you doing today?"
# Resampling and the half-sine onset of the first phoneme blur the edges by a few samples.
TOLERANCE_S = 0.004


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("piper-voices")


@pytest.fixture(scope="module")
def voice(voice_dir: Path) -> Path:
    return piper_gen.generate(voice_dir, "tiny", sample_rate=VOICE_RATE)


@pytest.fixture(scope="module")
def voice_2spk(voice_dir: Path) -> Path:
    return piper_gen.generate(voice_dir, "tiny", sample_rate=VOICE_RATE, num_speakers=2)


def phoneme_ids(voice: Path, text: str) -> list[int]:
    """The ids Piper feeds the model for `text` (one sentence)."""
    from piper import PiperVoice

    loaded = PiperVoice.load(voice)
    sentences = loaded.phonemize(speakable(text))
    assert len(sentences) == 1
    return loaded.phonemes_to_ids(sentences[0])


def expected_duration_s(voice: Path, text: str, speed: float = 1.0) -> float:
    """Voiced span of the tiny voice plus the silence the adapter keeps on each side."""
    voiced = piper_gen.voiced_samples(phoneme_ids(voice, text), length_scale=1.0 / speed)
    return voiced / VOICE_RATE + 2 * TRIM_KEEP_S


def synth(voice: Path, texts: list[str], **options: object) -> list[Speech]:
    async def run() -> list[Speech]:
        tts = PiperTTS(voice, **options)  # type: ignore[arg-type]
        await tts.start()
        try:
            return [await tts.synthesize(text) for text in texts]
        finally:
            await tts.close()

    return asyncio.run(run())


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_int16_at_the_asked_rate_with_the_expected_duration(voice: Path, rate: int) -> None:
    (speech,) = synth(voice, [CLAUSE], output_rate=rate)
    assert speech.pcm.dtype == np.int16
    assert speech.sample_rate == rate
    expected = expected_duration_s(voice, CLAUSE)
    assert abs(speech.duration_s - expected) < TOLERANCE_S, (speech.duration_s, expected)
    assert rms_dbfs(speech.pcm) > -25.0  # clearly audible, not a whisper of noise
    assert speech.compute_s > 0


def test_silence_at_the_edges_is_trimmed_but_the_speech_is_kept(voice: Path) -> None:
    (speech,) = synth(voice, [CLAUSE], output_rate=VOICE_RATE)
    raw = piper_gen.raw_samples(len(phoneme_ids(voice, CLAUSE))) / VOICE_RATE
    # The voice pads ~0.19 s of silence around the speech; the listener hears almost none of it.
    assert speech.duration_s < raw - 0.15
    keep = round(TRIM_KEEP_S * VOICE_RATE)
    lead, tail = speech.pcm[: keep - 5], speech.pcm[-(keep - 5) :]
    assert np.abs(lead).max() < 400 and np.abs(tail).max() < 400  # kept margins are quiet
    body = speech.pcm[keep : keep + 200]
    assert np.abs(body).max() > 1000  # and the speech starts right after them


def test_speed_two_halves_the_duration(voice: Path) -> None:
    normal, fast = (synth(voice, [CLAUSE], output_rate=48000, speed=s)[0] for s in (1.0, 2.0))
    assert abs(fast.duration_s - expected_duration_s(voice, CLAUSE, speed=2.0)) < TOLERANCE_S
    speech_normal = normal.duration_s - 2 * TRIM_KEEP_S
    speech_fast = fast.duration_s - 2 * TRIM_KEEP_S
    assert speech_fast == pytest.approx(speech_normal / 2, rel=0.03)


@pytest.mark.parametrize("text", ["😀🎉", "  \n\t ", "👍🏽 ❤️ ✨", "→ ★ ♪", "..."])
def test_nothing_speakable_gives_empty_audio_and_no_error(voice: Path, text: str) -> None:
    (speech,) = synth(voice, [text], output_rate=48000)
    assert speech.pcm.dtype == np.int16
    assert speech.pcm.size == 0
    assert speech.duration_s == 0.0


def test_emoji_inside_a_clause_are_not_spoken(voice: Path) -> None:
    plain, decorated = synth(voice, ["Great job", "Great job 🎉👍🏽"], output_rate=48000)
    assert decorated.pcm.size == plain.pcm.size > 0
    assert np.array_equal(decorated.pcm, plain.pcm)


@pytest.mark.parametrize(
    ("written", "spoken"),
    [("A low of 12°C (54°F) today", "A low of 12 degrees Celsius (54 degrees Fahrenheit) today"),
     ("Turn it 90° to the left", "Turn it 90 degrees to the left")],
)  # fmt: skip
def test_temperatures_and_angles_are_read_in_degrees(voice: Path, written: str, spoken: str) -> None:
    assert speakable(written) == spoken
    said, expected = synth(voice, [written, spoken], output_rate=48000)
    assert said.pcm.size > 0 and np.array_equal(said.pcm, expected.pcm)  # the voice says the words, not "12 C"


def _dominant_hz(speech: Speech) -> float:
    spectrum = np.abs(np.fft.rfft(speech.pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(speech.pcm.size, 1.0 / speech.sample_rate)
    return float(np.sum(freqs * spectrum) / np.sum(spectrum))


def test_speaker_id_selects_a_different_voice(voice_2spk: Path) -> None:
    (first,) = synth(voice_2spk, [CLAUSE], output_rate=48000, speaker=0)
    (second,) = synth(voice_2spk, [CLAUSE], output_rate=48000, speaker=1)
    assert abs(first.duration_s - second.duration_s) < TOLERANCE_S  # same words, same timing
    # The second speaker of the generated voice speaks 1.6x higher.
    assert _dominant_hz(second) / _dominant_hz(first) == pytest.approx(1.6, rel=0.1)


@pytest.mark.parametrize(("speaker", "speakers"), [(2, 2), (-1, 2), (1, 1)])
def test_speaker_out_of_range_fails_clearly(voice: Path, voice_2spk: Path, speaker: int, speakers: int) -> None:
    path = voice_2spk if speakers == 2 else voice
    with pytest.raises(ConfigError) as err:
        PiperTTS(path, output_rate=48000, speaker=speaker)
    assert f"speaker id {speaker}" in err.value.message
    assert f"{speakers} speaker" in err.value.message
    assert "tts.speaker" in err.value.hint


def test_truncated_voice_names_the_file(voice: Path, tmp_path: Path) -> None:
    broken = tmp_path / "en_US-broken-medium.onnx"
    data = voice.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    shutil.copy(f"{voice}.json", f"{broken}.json")
    tts = PiperTTS(broken, output_rate=48000)
    with pytest.raises(ModelError) as err:
        asyncio.run(tts.start())
    assert str(broken) in err.value.message
    assert "voicecli models pull" in err.value.hint


def test_missing_voice_gives_the_pull_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        PiperTTS("piper-en_US-lessac-medium", output_rate=48000)
    assert "voicecli models pull piper-en_US-lessac-medium" in err.value.hint
    with pytest.raises(ModelError) as err:
        PiperTTS(tmp_path / "nowhere.onnx", output_rate=48000)
    assert str(tmp_path / "nowhere.onnx") in err.value.message
    assert "voicecli models pull" in err.value.hint


def test_missing_or_corrupt_config_names_the_json(voice: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(voice, lonely)
    with pytest.raises(ModelError) as err:
        PiperTTS(lonely, output_rate=48000)
    assert "lonely.onnx.json" in err.value.message
    Path(f"{lonely}.json").write_text('{"audio": ', encoding="utf-8")
    with pytest.raises(ModelError) as err:
        PiperTTS(lonely, output_rate=48000)
    assert "lonely.onnx.json" in err.value.message and "corrupt" in err.value.message


def test_clauses_requested_together_are_serialised_and_all_delivered(voice: Path) -> None:
    texts = ["One clause.", "Another, slightly longer clause.", "A third."]

    async def run() -> list[Speech]:
        tts = PiperTTS(voice, output_rate=48000, threads=1)
        await tts.start()
        try:
            return list(await asyncio.gather(*(tts.synthesize(t) for t in texts)))
        finally:
            await tts.close()

    results = asyncio.run(run())
    assert [s.text for s in results] == texts
    for speech, text in zip(results, texts, strict=True):
        assert abs(speech.duration_s - expected_duration_s(voice, text)) < TOLERANCE_S


def test_use_after_close_is_a_clear_error(voice: Path) -> None:
    async def run() -> None:
        tts = PiperTTS(voice, output_rate=48000)
        await tts.start()
        await tts.close()
        await tts.close()  # idempotent
        await tts.synthesize("Too late.")

    with pytest.raises(EngineError, match="start"):
        asyncio.run(run())


def test_a_standalone_opener_is_spoken_from_memory_with_no_synthesis_on_the_reply_path(voice: Path) -> None:
    # "Sure" is a reply's first clause of its own (pipeline.chunker); the speaker must not wait for Piper on it.
    sure, again, clause = synth(voice, ["Sure", "Sure", CLAUSE], output_rate=48000)
    assert abs(sure.duration_s - expected_duration_s(voice, "Sure")) < TOLERANCE_S  # the word itself, whole
    assert rms_dbfs(sure.pcm) > -25.0
    assert sure.compute_s == 0.0 and sure.extra.get("cached") == 1.0
    assert np.array_equal(sure.pcm, again.pcm)
    sure.pcm[:] = 0  # playback owns what it was given: the next reply still says the word
    assert np.abs(again.pcm).max() > 1000
    assert clause.compute_s > 0 and "cached" not in clause.extra  # anything else is synthesised as before
