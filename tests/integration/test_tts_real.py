"""A real-size (Piper "medium", random weights) generated voice through the adapter. Needs torch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from voicecli.engines.base import Speech
from voicecli.engines.tts import PiperTTS
from voicecli.testmodels import piper as piper_gen

pytest.importorskip("torch", reason="generating a real-size Piper voice needs torch (CPU wheel)")
pytestmark = [pytest.mark.engines, pytest.mark.slow]


def test_real_size_voice_speaks_a_clause_at_a_realistic_length(tmp_path: Path) -> None:
    voice = piper_gen.generate(tmp_path, "real")
    # What a downloaded medium voice weighs: ~63 MB of float32 weights.
    assert 55e6 < voice.stat().st_size < 75e6
    config = json.loads(Path(f"{voice}.json").read_text(encoding="utf-8"))
    assert config["num_speakers"] == 1 and config["audio"]["sample_rate"] == 22050

    async def run() -> Speech:
        tts = PiperTTS(voice, output_rate=48000, threads=1)
        await tts.start()
        try:
            return await tts.synthesize("The weather today looks bright and sunny across the whole city.")
        finally:
            await tts.close()

    speech = asyncio.run(run())
    assert speech.pcm.dtype == np.int16 and speech.sample_rate == 48000
    # Eleven words at a real voice's pace (random durations vary from run to run).
    assert 1.5 < speech.duration_s < 6.0
    assert np.abs(speech.pcm).max() > 10000
