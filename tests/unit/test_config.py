"""Config: defaults < file < env < flags, and errors that name the bad key."""

from __future__ import annotations

import re
import typing
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


# --- environment variables that are not config keys (issue 14) ---------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_documented_variables_that_are_not_config_keys_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICECLI_MODELS_BASE_URL", "http://host/m")  # looks like "models.base_url"
    monkeypatch.setenv("VOICECLI_MANIFEST", str(tmp_path / "manifest.toml"))
    monkeypatch.setenv("VOICECLI_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("VOICECLI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VOICECLI_VAD_HANGOVER_MS", "650")  # a real key still applies
    cfg = config.load()
    assert cfg.vad.hangover_ms == 650
    assert cfg.models == config.ModelsConfig()


def test_unknown_env_key_names_the_variable_and_the_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECLI_MODELS_BASEURL", "http://host/m")
    with pytest.raises(ConfigError) as err:
        config.load(path=tmp_path / "none.toml")
    assert "models.baseurl" in err.value.message and "VOICECLI_MODELS_BASEURL" in err.value.message
    assert "section 'models': dir, stt, llm, tts" in err.value.hint
    assert "[" not in err.value.hint  # the CLI prints hints as rich markup, which eats "[models]"


def test_models_dir_from_env_beats_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[models]\ndir = "{tmp_path / "from-file"}"\n')
    assert config.load(path=path).models.dir == str(tmp_path / "from-file")
    monkeypatch.setenv("VOICECLI_MODELS_DIR", str(tmp_path / "from-env"))
    assert config.load(path=path).models.dir == str(tmp_path / "from-env")
    flags = {"models": {"dir": str(tmp_path / "from-flag")}}
    assert config.load(flags, path=path).models.dir == str(tmp_path / "from-flag")


def test_every_voicecli_variable_in_the_code_is_a_config_key_or_ignored() -> None:
    """A new VOICECLI_* variable read on its own must be listed in NOT_CONFIG_ENV, or it breaks every
    command as an 'unknown config key' as soon as it happens to start with a section name."""
    sections = {name: typing.get_type_hints(typ) for name, typ in config._sections().items()}
    found: set[str] = set()
    sources = [*REPO.joinpath("voicecli").rglob("*.py"), *REPO.joinpath("scripts").glob("*")]
    for source in sources:
        if source.is_file():
            found |= set(re.findall(r"VOICECLI_[A-Z][A-Z0-9_]*[A-Z0-9]", source.read_text(encoding="utf-8")))
    assert {"VOICECLI_CONFIG", "VOICECLI_MODELS_BASE_URL", "VOICECLI_MODELS_DIR"} <= found
    for name in sorted(found - config.NOT_CONFIG_ENV):
        rest = name.removeprefix("VOICECLI_").lower()
        keys = [(s, rest[len(s) + 1 :]) for s in sections if rest.startswith(s + "_")]
        assert any(key in sections[s] for s, key in keys), f"{name} is neither a config key nor in NOT_CONFIG_ENV"


def test_remote_llm_keys_from_file_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[llm]\nurl = "http://gpu-box:8080/v1"\nmodel = "qwen2.5-7b"\n')
    monkeypatch.setenv("VOICECLI_LLM_API_KEY", "sk-from-env")
    monkeypatch.setenv("VOICECLI_LLM_TIMEOUT_S", "45")
    cfg = config.load(path=path)
    assert (cfg.llm.url, cfg.llm.model, cfg.llm.api_key, cfg.llm.timeout_s) == (
        "http://gpu-box:8080/v1", "qwen2.5-7b", "sk-from-env", 45.0,
    )  # fmt: skip
    cfg = config.load({"llm": {"url": "http://10.0.0.2:11434/v1", "model": None}}, path=path)
    assert cfg.llm.url == "http://10.0.0.2:11434/v1" and cfg.llm.model == "qwen2.5-7b"
    assert config.LlmConfig().url == "" and config.LlmConfig().timeout_s == 20.0  # default: the local model


def test_remote_llm_url_and_timeout_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    for bad in ("gpu-box:8080/v1", "ftp://gpu-box/v1", "http://gpu-box:port/v1", "http:///v1"):
        path.write_text(f'[llm]\nurl = "{bad}"\n')
        with pytest.raises(ConfigError, match=r"llm\.url.*http\(s\) URL") as err:
            config.load(path=path)
        assert "--llm-url" in err.value.hint
    path.write_text('[llm]\nurl = ""\n')
    assert config.load(path=path).llm.url == ""
    path.write_text("[llm]\ntimeout_s = 0\n")
    with pytest.raises(ConfigError, match=r"llm\.timeout_s.*1\.\.600"):
        config.load(path=path)


def test_remote_llm_api_key_is_not_in_the_config_repr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICECLI_LLM_API_KEY", "sk-do-not-print")
    cfg = config.load(path=tmp_path / "none.toml")
    assert cfg.llm.api_key == "sk-do-not-print"
    assert "sk-do-not-print" not in repr(cfg) and "sk-do-not-print" not in str(cfg.llm)
