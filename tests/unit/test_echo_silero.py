"""`--echo auto|aec` needs the Silero model that faster-whisper ships from 1.2.1 on (issue 14): without
it, auto falls back to half duplex and aec is an error naming what to install, instead of a crash
when the barge-in confirmer loads the model. No audio: the asset lookup is pointed at an empty dir,
as an older faster-whisper's assets would be."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicecli.audio.echo import resolve_mode
from voicecli.config import Config
from voicecli.errors import ConfigError
from voicecli.events import Event

pytest.importorskip("livekit")  # the canceller itself is installed: only the Silero model is missing
faster_whisper_vad = pytest.importorskip("faster_whisper.vad")


@pytest.fixture
def old_faster_whisper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """faster-whisper's assets without silero_vad_v6.onnx (1.1.x shipped only silero_vad_v5)."""
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "silero_vad_v5.onnx").write_bytes(b"not this one")
    monkeypatch.setattr(faster_whisper_vad, "get_assets_path", lambda: str(assets))
    return assets


def test_the_installed_faster_whisper_ships_the_silero_model() -> None:
    assert (Path(faster_whisper_vad.get_assets_path()) / "silero_vad_v6.onnx").is_file()
    assert resolve_mode("auto") == "aec"


def test_auto_falls_back_to_half_duplex_without_the_silero_model(old_faster_whisper: Path) -> None:
    assert resolve_mode("auto") == "half-duplex"


def test_aec_without_the_silero_model_says_what_to_install(old_faster_whisper: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_mode("aec")
    assert "silero_vad_v6.onnx" in err.value.message
    assert "faster-whisper>=1.2.1" in err.value.hint
    assert "--echo half-duplex" in err.value.hint


def test_barge_in_confirmer_without_the_silero_model_is_a_config_error(old_faster_whisper: Path) -> None:
    from voicecli.audio.silero import SileroVad

    with pytest.raises(ConfigError, match=r"silero_vad_v6\.onnx") as err:
        SileroVad()
    assert "faster-whisper>=1.2.1" in err.value.hint


def test_talk_with_echo_auto_runs_half_duplex_with_a_warning(old_faster_whisper: Path) -> None:
    from voicecli.pipeline.wiring import _echo_setup

    events: list[Event] = []
    echo, talk = _echo_setup(Config(), None, None, events.append)
    assert echo is None
    assert talk.barge_in is False  # half duplex: the mic is ignored while the assistant speaks
    assert [e.kind for e in events] == ["warning"]
    assert "half duplex" in events[0].data["message"]
