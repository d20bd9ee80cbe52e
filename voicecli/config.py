"""Configuration: frozen dataclasses per stage, from a TOML file, env overrides, then CLI flags.

Precedence: defaults < config file < env (VOICECLI_<SECTION>_<KEY>) < flags.
A bad key or value raises ConfigError naming the key and what is allowed.

`VOICECLI_MODELS_DIR` is the env form of `models.dir` like any other key. The variables in NOT_CONFIG_ENV
are not config keys: each is read on its own where it is used, and the config mapping ignores them.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from voicecli import paths
from voicecli.errors import ConfigError


@dataclass(frozen=True)
class AudioConfig:
    input: str = ""  # device index or name substring; "" = system default
    output: str = ""
    echo: str = "auto"  # auto | aec | half-duplex | off: auto = aec when the canceller is installed


@dataclass(frozen=True)
class ModelsConfig:
    dir: str = ""  # "" = platform data dir
    stt: str = "whisper-base.en"
    llm: str = "qwen2.5-0.5b-instruct-q4_k_m"
    tts: str = "piper-en_US-lessac-medium"


@dataclass(frozen=True)
class SttConfig:
    compute_type: str = "int8"
    # 0 = auto (engines.threads.stt_threads): 1 on up to 2 cores, where CTranslate2's second thread costs more
    # than it gains (whisper base, 10 s window, 2-core Xeon: 161 -> 127 ms p50; its decoder steps are tiny GEMMs,
    # ~8 ms each on 2 threads against ~2.7 on one), 2 on bigger machines.
    threads: int = 0
    beam_size: int = 1
    language: str = "en"
    initial_prompt: str = ""
    # Shortest whisper encoder window: an utterance is encoded in max(its length + 1 s, this) instead of 30 s
    # (3-4x faster, same word error rate; 5 s floors make the models loop). 0 = always 30 s.
    # scripts/stt_window_wer.py, 100 utterances of 5 voices, 2-core AMD EPYC: base 4.1% WER, 201 ms p50 at 7 s,
    # 4.2%, 211 ms at 8 s, 4.0%, 241 ms at 10 s (6 s: 4.5%, and two decodes looped and re-ran on 30 s); tiny.en
    # 4.8%, 112 ms at 7 s against 5.3%, 117 ms at 8 s (one re-run at either). The pause's transcription in the
    # pipeline's worker (base, one thread, the benchmark's 12 questions): 171 ms p50 at 7 s, 181 at 8.
    window_floor_s: float = 7.0


@dataclass(frozen=True)
class LlmConfig:
    n_ctx: int = 2048
    # Ceilings for the decode / prefill threads; 0 = decided per request from the cores that are free then
    # (engines.threads: 2 then 1 on 2 quiet cores, 1 next to a busy program, up to 15 / 8 on 16 cores).
    # ggml's threads wait for each other at every op: two threads on two cores next to one busy program
    # collapse ~140x (SmolLM2: 101 -> 0.7 tokens/s), one thread does not.
    threads: int = 0
    batch_threads: int = 0
    max_tokens: int = 200
    history_tokens: int = 1024
    # Sampling that suits small instruct models: a mild repeat penalty and min_p stop loops and drift.
    temperature: float = 0.6
    top_p: float = 0.9
    min_p: float = 0.1
    repeat_penalty: float = 1.1
    system_prompt: str = (
        "You are a helpful voice assistant running on the user's desktop. "
        "Answer in one to three short spoken sentences. No markdown, no lists, no emoji."
    )
    # An OpenAI-compatible server instead of the local GGUF (llama-server, llama_cpp.server, Ollama, vLLM):
    # "http://HOST:PORT/v1"; "" = the local model. `model` "" = the first the server lists. The key is sent as
    # a Bearer token only, never shown. `timeout_s`: longest wait for the first token (and between two tokens).
    url: str = ""
    model: str = ""
    api_key: str = field(default="", repr=False)
    timeout_s: float = 20.0


@dataclass(frozen=True)
class TtsConfig:
    speaker: int = 0
    speed: float = 1.0


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = 2  # webrtcvad 0..3
    floor_dbfs: float = -50.0
    start_ms: int = 100  # voiced audio needed before SILENCE -> SPEECH (ignores clicks)
    pause_ms: int = 120  # early pause signal: start speculative STT (120 against 200: target set TTFA -100 ms)
    hangover_ms: int = 500  # end of turn
    # After this much silence the words so far are transcribed at once on the partials' worker (a "tail partial",
    # pipeline.prefill): when the pause signal comes pause_ms - tail_ms later, its transcript is done or nearly, and
    # the pause does not start one of its own. 0: off (the pause transcribes).
    tail_ms: int = 40
    unfinished_extra_ms: int = 700  # more, when the speculative transcript sounds unfinished ("for", "that", "...")
    # More instead, when it ends like a speaker still looking for words ("the", "and", "um", a comma:
    # pipeline.endpoint.still_thinking): ~2.5 s of silence in all before the turn ends.
    thinking_extra_ms: int = 2000
    # The semantic end of turn (pipeline.turn_end): the LLM's probability that the user is done after the words
    # heard at the pause. "auto" (the default): the manifest's judge (SmolLM2-135M), if `voicecli models pull` got
    # it, else none; "off"; "" = the reply LLM judges (when it is local); or the path (or manifest name) of a small
    # chat GGUF that judges on one thread, on the reply LLM's worker (real SmolLM2-135M: ~20-40 ms, its words
    # prefilled while the user speaks).
    # At or above `complete_p` the turn ends at the pause; below `incomplete_p` it is held open like an unfinished
    # sentence.
    # 0.4 (was 0.2): SmolLM2 puts 0.46-0.79 after whole questions, 0.17-0.37 after first halves such as "What should
    # I cook?" and after short commands; at 0.2 such halves split 1-2 of the 4 paused clips per run, at 0.4 none.
    # A first half that is a whole command ("Tell me a joke.", 0.77) cannot be told from an end by the words: only
    # a question ends the turn at the pause (pipeline.turn_end.is_question: a "?", or a question word first and a
    # final "."); commands wait for the hangover.
    turn_model: str = "auto"
    complete_p: float = 0.4
    incomplete_p: float = 0.01
    # A turn the words call complete still ends no sooner than this much silence (0: at the verdict, ~pause_ms
    # + 180 ms with whisper base, ~pause_ms + 80 with tiny.en): for a user who pauses mid-sentence after words that
    # sound like a whole question. 2-core Xeon, tiny.en set, pause_ms 60: 350 held every such pause up to 350 ms
    # but put the complete questions' TTFA p50 at 555 ms instead of ~370; the target set did not move.
    complete_min_ms: int = 0
    preroll_ms: int = 300
    min_utterance_ms: int = 250
    max_utterance_s: float = 30.0


@dataclass(frozen=True)
class TalkConfig:
    barge_in: bool = True
    barge_in_min_ms: int = 200  # speech needed to interrupt: a cough or a click is shorter
    max_reply_words: int = 70  # a spoken reply ends with the sentence that reaches this many words (~80 at most)
    # Start the LLM on the speculative transcript during the hangover (nothing plays before the turn is
    # confirmed; thrown away if the user goes on talking).
    prepare_reply: bool = True
    # While the user speaks, transcribe the audio so far every quarter second (on a whisper worker of its own at
    # niceness 19, frozen at every pause) and prefill the local LLM with those words (pipeline.prefill): at
    # the pause only the tail of the prompt is left to evaluate. 2-core Xeon, whisper base + the 0.5B model:
    # prompt tokens after the pause p50 22 -> 12.5-16, LLM first token 267-282 -> 219-241 ms, TTFA over the
    # complete questions 759-768 -> 688-718 ms; next to a busy program no worse. Costs a second whisper
    # process (~200 MB). On one shared worker it measured worse: the pause's transcription waited behind a partial.
    prefill_while_speaking: bool = True
    # The first clause may end before "and", "with", "because" ... once it has this many words, without waiting
    # for the LLM's first comma (pipeline.chunker.SOFT_BREAK_BEFORE); 0 = only at punctuation. Off by default:
    # no TTFA gain measurable over 24 turns with SmolLM2 (its first clauses mostly have an early comma), and
    # it breaks the prosody of the first sentence when it does cut.
    first_clause_soft_words: int = 0


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    stt: SttConfig = field(default_factory=SttConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    talk: TalkConfig = field(default_factory=TalkConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "audio.echo": ("auto", "aec", "half-duplex", "off"),
    "stt.compute_type": ("int8", "int8_float32", "float32", "float16", "int16", "default"),
}
RANGES: dict[str, tuple[float, float]] = {
    "vad.complete_p": (0.0, 1.0),
    "vad.incomplete_p": (0.0, 1.0),
    "vad.aggressiveness": (0, 3),
    "vad.floor_dbfs": (-100, 0),
    "stt.beam_size": (1, 10),
    "stt.threads": (0, 64),
    "stt.window_floor_s": (0.0, 30.0),
    "llm.threads": (0, 64),
    "llm.batch_threads": (0, 64),
    "llm.n_ctx": (256, 131072),
    "tts.speed": (0.25, 4.0),
    "llm.temperature": (0.0, 2.0),
    "llm.top_p": (0.0, 1.0),
    "llm.min_p": (0.0, 1.0),
    "llm.repeat_penalty": (0.5, 2.0),
    "talk.max_reply_words": (5, 1000),
    "talk.first_clause_soft_words": (0, 100),
    "llm.timeout_s": (1.0, 600.0),
}


# VOICECLI_* variables that are not config keys, and where they are read. Some look like one
# (VOICECLI_MODELS_BASE_URL would be "models.base_url"), so the config mapping must skip them.
NOT_CONFIG_ENV = frozenset(
    {
        "VOICECLI_CONFIG",  # paths.config_file: the config file itself
        "VOICECLI_DATA_DIR",  # paths.data_dir
        "VOICECLI_MANIFEST",  # models.manifest_path: another model manifest
        "VOICECLI_MODELS_BASE_URL",  # models.Manifest.url: a mirror to pull from
        "VOICECLI_REAL_CACHE",  # testmodels.realweights: cache of real-size generated models
        "VOICECLI_WHEEL_CACHE",  # scripts/build_llama.sh: cache of the llama-cpp-python wheel
        "VOICECLI_LLAMA_CHECK",  # engines.llm_probe: 0 skips the llama.cpp start-up check
        "VOICECLI_ECHO_TRIALS",  # tests/e2e/test_echo.py: number of trials
    }
)


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert `value` (from TOML, env text or a flag) to `typ`, or raise ConfigError."""
    if isinstance(typ, types.UnionType):  # e.g. "int | None" is not used yet; keep strict
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, bool | dict | list):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config key '{key}' has the value {value!r}, but it must be {typ.__name__}",
            hint=f"fix '{key}' in {paths.config_file()} (or the env variable / flag that sets it)",
        ) from None
    raise ConfigError(f"config key '{key}' has an unsupported type")


def _check_url(key: str, value: str) -> None:
    """llm.url: "" or an http(s) URL with a host (the path, /v1, is checked against the server at start)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a bad port raises ValueError
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"config key '{key}' is {value!r}; it must be an http(s) URL such as http://192.168.1.20:8080/v1",
            hint=f"fix '{key}' in {paths.config_file()} (or --llm-url / VOICECLI_LLM_URL); \"\" uses the local model",
        )


def _check(key: str, value: Any) -> None:
    if key == "llm.url" and value:
        _check_url(key, value)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(
            f"config key '{key}' is {value!r}; allowed: {', '.join(CHOICES[key])}",
            hint=f"fix '{key}' in {paths.config_file()}",
        )
    if key in RANGES:
        lo, hi = RANGES[key]
        if not lo <= value <= hi:
            raise ConfigError(
                f"config key '{key}' is {value!r}; allowed range {lo:g}..{hi:g}",
                hint=f"fix '{key}' in {paths.config_file()}",
            )


def _apply(cfg: Config, overrides: dict[str, dict[str, Any]], source: str) -> Config:
    sections = _sections()
    new_sections: dict[str, Any] = {}
    for section, values in overrides.items():
        if section not in sections:
            raise ConfigError(
                f"unknown config section '{section}' in {source}",
                hint="allowed sections: " + ", ".join(sections),
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' in {source} must be a table")
        current = new_sections.get(section, getattr(cfg, section))
        hints = typing.get_type_hints(sections[section])
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown config key '{section}.{key}' in {source}",
                    hint=f"allowed keys in section '{section}': " + ", ".join(hints),
                )
            value = _coerce(f"{section}.{key}", raw, hints[key])
            _check(f"{section}.{key}", value)
            changes[key] = value
        new_sections[section] = dataclasses.replace(current, **changes)
    return dataclasses.replace(cfg, **new_sections)


def _env_overrides() -> dict[str, dict[str, Any]]:
    """VOICECLI_<SECTION>_<KEY> variables as {section: {key: text}}. Variables in NOT_CONFIG_ENV and
    ones that name no section are not config keys and are left alone; an unknown key in a known
    section is an error naming the variable."""
    out: dict[str, dict[str, Any]] = {}
    sections = _sections()
    for name, value in sorted(os.environ.items()):
        if not name.startswith("VOICECLI_") or name in NOT_CONFIG_ENV:
            continue
        rest = name[len("VOICECLI_") :].lower()
        for section, typ in sections.items():
            if not rest.startswith(section + "_"):
                continue
            key = rest[len(section) + 1 :]
            keys = typing.get_type_hints(typ)
            if key not in keys:
                raise ConfigError(
                    f"unknown config key '{section}.{key}' from the environment variable {name}",
                    hint=f"allowed keys in section '{section}': "
                    + ", ".join(keys)
                    + f" (as VOICECLI_{section.upper()}_<KEY>); or unset {name}",
                )
            out.setdefault(section, {})[key] = value
            break
    return out


def read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}",
            hint=f"fix or delete {path}",
        ) from None


def load(flags: dict[str, dict[str, Any]] | None = None, path: Path | None = None) -> Config:
    """Defaults < file < env < flags. Flags with value None are ignored."""
    path = path or paths.config_file()
    cfg = _apply(Config(), read_file(path), str(path))
    cfg = _apply(cfg, _env_overrides(), "the environment (VOICECLI_* variables)")
    if flags:
        cleaned = {s: {k: v for k, v in kv.items() if v is not None} for s, kv in flags.items()}
        cfg = _apply(cfg, {s: kv for s, kv in cleaned.items() if kv}, "command-line flags")
    return cfg


def save(updates: dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    """Merge `updates` into the user's config file (validated first) and write it, keeping its mode: a
    config made private for its API key must not become world-readable (a new one holding a key is 0600)."""
    path = path or paths.config_file()
    data = read_file(path)
    _apply(Config(), {**data, **updates}, "the update")  # validate before writing anything
    for section, values in updates.items():
        data.setdefault(section, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_replacing(path, tomli_w.dumps(data), _mode_for(path, data))
    return path


PRIVATE_MODE = 0o600  # a config holding a secret (docs/remote-llm.md: chmod 600)


def _holds_secret(data: dict[str, Any]) -> bool:
    """True when `data` sets a secret: a field hidden from repr (llm.api_key)."""
    for section, typ in _sections().items():
        values = data.get(section)
        if isinstance(values, dict) and any(values.get(f.name) for f in dataclasses.fields(typ) if not f.repr):
            return True
    return False


def _mode_for(path: Path, data: dict[str, Any]) -> int | None:
    """The rewritten file's mode: the existing file's (a user's chmod stays), 0600 for a new file holding a
    secret, None for the umask's default."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return PRIVATE_MODE if _holds_secret(data) else None


def _write_replacing(path: Path, text: str, mode: int | None) -> None:
    """Write `text` to a temp file with `mode`, then rename it over `path` (never half a config)."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its own mode through O_CREAT
    # Created private, so a secret is never readable by others, even before the chmod.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else PRIVATE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if mode is not None:
            os.chmod(tmp, mode)  # exactly this mode: os.open's is masked by the umask
        f.write(text)
    tmp.replace(path)
