"""Config: defaults < file < env < flags, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicecli import config
from voicecli.errors import ConfigError


def test_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[vad]\nhangover_ms = 700\naggressiveness = 1\n[audio]\ninput = "USB"\n')
    monkeypatch.setenv("VOICECLI_VAD_AGGRESSIVENESS", "3")
    cfg = config.load({"audio": {"input": "Headset", "output": None}}, path=path)
    assert cfg.vad.hangover_ms == 700  # file
    assert cfg.vad.aggressiveness == 3  # env over file
    assert cfg.audio.input == "Headset"  # flag over file
    assert cfg.audio.output == ""  # None flags are ignored


def test_unknown_key_is_named_with_the_allowed_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[vad]\nhangover = 700\n")
    with pytest.raises(ConfigError) as err:
        config.load(path=path)
    assert "vad.hangover" in err.value.message
    assert "hangover_ms" in err.value.hint


def test_bad_value_type_and_range(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[vad]\nhangover_ms = "long"\n')
    with pytest.raises(ConfigError, match=r"vad\.hangover_ms"):
        config.load(path=path)
    path.write_text("[vad]\naggressiveness = 7\n")
    with pytest.raises(ConfigError, match=r"vad\.aggressiveness.*0\.\.3"):
        config.load(path=path)
    path.write_text('[audio]\necho = "maybe"\n')
    with pytest.raises(ConfigError, match="half-duplex"):
        config.load(path=path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[vad\n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        config.load(path=path)
    assert str(path) in err.value.message


def test_save_merges_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    config.save({"audio": {"input": "3"}}, path=path)
    config.save({"audio": {"output": "Speakers"}, "vad": {"hangover_ms": 600}}, path=path)
    cfg = config.load(path=path)
    assert (cfg.audio.input, cfg.audio.output, cfg.vad.hangover_ms) == ("3", "Speakers", 600)
    with pytest.raises(ConfigError):
        config.save({"audio": {"nope": 1}}, path=path)
    assert config.load(path=path).audio.output == "Speakers"  # nothing written on error
