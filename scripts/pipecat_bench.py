#!/usr/bin/env python3
"""Time to first audio (TTFA) of voicecli and of a fully local pipecat 1.14 stack, measured from outside both.

TTFA = true end of the user's speech in the fed clip -> first audible sample of the reply at the virtual speaker.
Both stacks run on the same virtual sound card (scripts/vsound.sh, a private rig in OUT/vsound) with the same
models (whisper base, scripted Qwen2.5-0.5B Q4_K_M, Piper en_US-joe-medium) and the same 12 espeak-ng clips
from voicecli's built-in corpus, one turn at a time, after one throwaway warm-up turn.

Clock: two parec streams record the mic feed sink's monitor (16 kHz; the mic is a remap of it, bit exact) and the
speaker's monitor (44.1 kHz) for the whole run. Each stream's sample 0 is placed on CLOCK_MONOTONIC by the lower
envelope of (read time - samples read / rate) over the reads within 20 s of the turn (a local anchor, so a slow
drift cannot accumulate; the drift over the run is reported). The fed clip is located in the mic recording by
cross-correlation (sample exact), its true speech end comes from the clip itself, the reply onset is the first
5 ms window above -50 dBFS in the speaker recording. Neither program's own timestamps are used. Error: the two
anchors can differ by up to one PulseAudio render block (~20 ms at the 20 ms latency requested), typically a few
ms, plus the 5 ms onset window.

`--models tiny` measures voicecli alone on issue 20's second set (real whisper tiny.en, the tiny generated LLM and
voice, the same judge), and reports what that set's done-when asks for: the TTFA over the complete clips (no
mid-sentence pause, not an interruption) and the paused clips split into two turns (the reply audible before the
true end of speech, or voicecli's events showing a second end of turn inside the clip).

Usage (the whole run holds the shared benchmark lock):
    flock /tmp/bench.lock /work/main/.venv/bin/python scripts/pipecat_bench.py run [--stacks voicecli,pipecat]
    flock /tmp/bench.lock /work/main/.venv/bin/python scripts/pipecat_bench.py run --models tiny --stacks voicecli
Internal (started by `run` in the pipecat venv):
    /work/pipecat-venv/bin/python scripts/pipecat_bench.py pipecat-bot --llm-url URL --llm-model NAME
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
HOME = Path.home()
WHISPER_DIR = HOME / ".cache/voicecli/real/whisper-base"
PIPER_DIR = HOME / ".cache/voicecli/real/piper-en_US-joe-medium"
PIPER_VOICE = "en_US-joe-medium"
LLM_GGUF = ROOT / ".models/real/llm/scripted-qwen2.5-0.5b-q4_k_m.gguf"
# voicecli's end-of-turn judge, which `voicecli models pull` fetches with the defaults (vad.turn_model "auto").
JUDGE_GGUF = HOME / ".cache/voicecli/real/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"

OWN_VENV = ROOT / ".venv"
PIPECAT_VENV = Path("/work/pipecat-venv")
LLM_PORT = 8765

MIC_RATE = 16000
SPK_RATE = 44100
ONSET_DBFS = -50.0  # a reply is audible from the first 5 ms window above this
WIN_S = 0.005
QUIET_END_S = 3.0  # the reply is over after this much silence (longer than any sentence gap seen)
NO_REPLY_S = 30.0  # a clip with no reply this long after its end is a miss
GAP_S = 1.0  # between the end of a reply and the next clip


@dataclass(frozen=True)
class ModelSet:
    name: str
    stt: Path
    llm: Path
    voice: Path  # the Piper .onnx


TARGET = ModelSet("target", WHISPER_DIR, LLM_GGUF, PIPER_DIR / f"{PIPER_VOICE}.onnx")


def tiny_set() -> ModelSet:
    """Real tiny.en with the tiny generated LLM and voice (generated here if missing; run by the voicecli venv)."""
    from voicecli import paths
    from voicecli.testmodels import generate_all, realweights

    generated = generate_all(paths.data_dir() / "generated-models", "tiny")
    return ModelSet("tiny", realweights.fetch("whisper-tiny.en"), generated["llm"], generated["tts"])


# ----------------------------------------------------------------------------------------------- the rig


def rig_env(directory: Path) -> dict[str, str]:
    """Start (idempotent) a private virtual sound card and return the client environment for it."""
    script = ROOT / "scripts/vsound.sh"
    subprocess.run(["bash", str(script), "start", str(directory)], check=True, capture_output=True, timeout=60)
    out = subprocess.run(["bash", str(script), "env", str(directory)], check=True, capture_output=True, text=True)
    env = dict(os.environ)
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip().strip("'\"")
    return env


def rig_stop(directory: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts/vsound.sh"), "stop", str(directory)], capture_output=True, timeout=30)


def capture_streams_on_vmic(env: dict[str, str]) -> int:
    """Recording streams on the virtual mic: how the harness sees, from outside, that a stack listens."""
    sources = subprocess.run(["pactl", "list", "short", "sources"], env=env, capture_output=True, text=True).stdout
    vmic = [line.split("\t")[0] for line in sources.splitlines() if line.split("\t")[1:2] == ["vmic"]]
    outs = subprocess.run(["pactl", "list", "short", "source-outputs"], env=env, capture_output=True, text=True).stdout
    return sum(1 for line in outs.splitlines() if vmic and line.split("\t")[1:2] == vmic)


class Monitor:
    """One parec stream on a sink monitor for the whole run, with the read times that anchor it."""

    def __init__(self, env: dict[str, str], device: str, rate: int) -> None:
        self.rate = rate
        self.win = int(rate * WIN_S)
        # A window is `win` samples: 220 at 44.1 kHz is 4.99 ms, not 5. Counting windows as WIN_S made every
        # reply onset 0.23% of the run later than it was (+0.4 s by the end of a 3-minute run).
        self.win_s = self.win / rate
        self._buf = bytearray()
        self.reads: list[tuple[float, int]] = []  # (monotonic time of the read, samples read so far)
        self.levels: list[float] = []  # dBFS per 5 ms window, for live decisions
        self._proc = subprocess.Popen(
            ["parec", "-d", device, "--raw", "--format=s16le", f"--rate={rate}", "--channels=1",
             "--latency-msec=20"],
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while data := os.read(fd, 8192):
            t = time.monotonic()
            self._buf += data
            n = len(self._buf) // 2
            self.reads.append((t, n))
            while (len(self.levels) + 1) * self.win <= n:
                i = len(self.levels) * self.win
                x = np.frombuffer(self._buf, np.int16, count=self.win, offset=2 * i).astype(np.float32) / 32768
                self.levels.append(float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-9)))

    def samples(self) -> int:
        return len(self._buf) // 2

    def anchor(self, t: float, span_s: float = 20.0) -> float:
        """Monotonic time of sample 0, from the lower envelope of the reads within span_s of t: a local anchor
        per turn, so any drift between the stream and CLOCK_MONOTONIC cannot accumulate over the run."""
        r = np.array(self.reads[5:])  # skip the stream's start-up burst
        near = r[np.abs(r[:, 0] - t) <= span_s]
        return float((near[:, 0] - near[:, 1] / self.rate).min())

    def drift_ms(self) -> float:
        """How far the anchor moved between the run's first and last 30 s (0 = no drift)."""
        r = np.array(self.reads[5:])
        return (self.anchor(r[-1, 0] - 15, 15) - self.anchor(r[0, 0] + 15, 15)) * 1e3

    def stop(self) -> npt.NDArray[np.int16]:
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(10)
        return np.frombuffer(bytes(self._buf[: len(self._buf) // 2 * 2]), np.int16).copy()


def feed(env: dict[str, str], pcm: npt.NDArray[np.int16]) -> subprocess.Popen[bytes]:
    """Play a clip into the virtual mic (200 ms buffer: a busy machine cannot punch holes in it). From a file,
    not a pipe: a pipe closed before the clip has played makes pacat spin on its end of file (~half a core) for
    the length of the clip, taken from the stack under test while the "user" speaks."""
    with tempfile.TemporaryFile() as clip:
        clip.write(pcm.astype("<i2").tobytes())
        clip.seek(0)
        return subprocess.Popen(
            ["pacat", "--playback", "-d", "vmic_feed", "--raw", "--format=s16le", f"--rate={MIC_RATE}",
             "--channels=1", "--latency-msec=200"],
            stdin=clip, env=env,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------- clips


@dataclass
class ClipInfo:
    name: str
    text: str
    path: str
    duration_s: float
    speech_start_s: float
    speech_end_s: float


def write_clips(out: Path) -> list[ClipInfo]:
    """The 12 built-in corpus clips as 16 kHz WAVs + JSON (run by the voicecli venv)."""
    from voicecli.bench import corpus

    directory = out / "clips"
    directory.mkdir(parents=True, exist_ok=True)
    infos = []
    for clip in corpus.builtin():
        path = directory / f"{clip.name}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(MIC_RATE)
            w.writeframes(clip.pcm.astype("<i2").tobytes())
        infos.append(ClipInfo(clip.name, clip.text, str(path), clip.duration_s, clip.speech_start_s,
                              clip.speech_end_s))  # fmt: skip
    (directory / "clips.json").write_text(json.dumps([asdict(i) for i in infos], indent=1))
    return infos


def read_pcm(path: str) -> npt.NDArray[np.int16]:
    with wave.open(path, "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).copy()


def locate(rec: npt.NDArray[np.int16], clip: npt.NDArray[np.int16], lo: int, hi: int) -> int:
    """Sample index of the clip's first sample inside rec[lo:hi] (FFT cross-correlation)."""
    seg = rec[max(lo, 0) : hi].astype(np.float64)
    c = clip.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(seg) + len(c))))
    corr = np.fft.irfft(np.fft.rfft(seg, n) * np.conj(np.fft.rfft(c, n)), n)[: len(seg) - len(c) + 1]
    return max(lo, 0) + int(np.argmax(corr))


# ----------------------------------------------------------------------------------------------- one stack


@dataclass
class Turn:
    clip: str
    feed_mic_sample: int  # where the clip starts in the mic recording
    speech_end_t: float  # monotonic
    window_end_t: float  # the next clip's feed (or the end of the run)
    ttfa_s: float | None = None
    early: bool = False  # the speaker was already playing at the true end of speech (a split turn)
    turns_ended: int | None = None  # voicecli only: its end-of-turn events inside this clip's window (1 = one turn)
    verdicts: list[str] = field(default_factory=list)  # voicecli only: its end-of-turn judge's, at each pause

    @property
    def paused(self) -> bool:
        return "pause" in self.clip

    @property
    def complete(self) -> bool:
        """A complete question or command: no mid-sentence pause, not one of the interrupting clips."""
        return not self.paused and "interrupt" not in self.clip

    @property
    def split(self) -> bool:
        return self.early or (self.turns_ended or 0) > 1


@dataclass
class StackResult:
    stack: str
    turns: list[Turn] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def start_stack(stack: str, env: dict[str, str], out: Path, models: ModelSet) -> list[subprocess.Popen[bytes]]:
    """Start the stack under test in its own process group; returns its processes (server first)."""
    procs: list[subprocess.Popen[bytes]] = []
    if stack == "voicecli":
        cmd = [
            str(OWN_VENV / "bin/voicecli"), "talk", "--input", "voicecli_mic", "--output", "voicecli_speaker",
            "--stt", str(models.stt), "--llm", str(models.llm), "--voice", str(models.voice),
            "--plain", "--max-turns", "1000", "--transcript", str(out / "voicecli-transcript.jsonl"),
            "--events", str(out / "voicecli-events.jsonl"),
        ]  # fmt: skip
        log = open(out / "voicecli-talk.log", "wb")  # noqa: SIM115 - lives as long as the process
        judge = {"VOICECLI_VAD_TURN_MODEL": str(JUDGE_GGUF)}  # explicit: the models dir here is not the pulled one
        procs.append(subprocess.Popen(cmd, env={**env, **judge, "COLUMNS": "200"}, stdout=log, stderr=log,
                                      start_new_session=True))  # fmt: skip
        return procs
    py = str(PIPECAT_VENV / "bin/python")
    slog = open(out / "llama-server.log", "wb")  # noqa: SIM115
    # llama_cpp.server with its own defaults (n_ctx 2048, n_threads = cores // 2, n_threads_batch = cores).
    server = [py, "-m", "llama_cpp.server", "--model", str(LLM_GGUF), "--host", "127.0.0.1", "--port", str(LLM_PORT)]
    procs.append(subprocess.Popen(server, stdout=slog, stderr=slog, start_new_session=True))
    url = f"http://127.0.0.1:{LLM_PORT}/v1"
    model = ""
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                model = json.load(r)["data"][0]["id"]
                break
        except OSError:
            time.sleep(0.5)
    if not model:
        raise RuntimeError(f"llama_cpp.server did not come up; see {out / 'llama-server.log'}")
    blog = open(out / "pipecat-bot.log", "wb")  # noqa: SIM115
    from voicecli.config import LlmConfig  # voicecli's default system prompt, for both stacks

    cmd = [py, __file__, "pipecat-bot", "--llm-url", url, "--llm-model", model, "--system", LlmConfig().system_prompt]
    procs.append(subprocess.Popen(cmd, env=env, stdout=blog, stderr=blog, start_new_session=True))
    return procs


def stop_stack(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # the bot before its LLM server
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def run_turn(env: dict[str, str], mic: Monitor, spk: Monitor, pcm: npt.NDArray[np.int16], label: str) -> int:
    """Feed one clip, wait for the reply to start and end (or time out). Returns the mic sample at the feed."""
    mic_at = mic.samples()
    spk_at = len(spk.levels)
    player = feed(env, pcm)
    player.wait(60)
    clip_end = time.monotonic()
    started = False
    while True:
        time.sleep(0.1)
        lv = spk.levels[spk_at:]
        loud = [i for i, v in enumerate(lv) if v > ONSET_DBFS]
        now = time.monotonic()
        if loud:
            started = True
            if (len(lv) - 1 - loud[-1]) * spk.win_s >= QUIET_END_S:
                break
        elif now - clip_end > NO_REPLY_S:
            break
        if now - clip_end > 120:  # a reply that never ends
            break
    print(f"  {label}: {'reply' if started else 'NO REPLY'}", flush=True)
    time.sleep(GAP_S)
    return mic_at


def measure_stack(stack: str, env: dict[str, str], clips: list[ClipInfo], out: Path, models: ModelSet) -> StackResult:
    result = StackResult(stack)
    mic = Monitor(env, "vmic_feed.monitor", MIC_RATE)
    spk = Monitor(env, "vspeaker.monitor", SPK_RATE)
    time.sleep(1.0)
    base = capture_streams_on_vmic(env)
    procs = start_stack(stack, env, out, models)
    feeds: list[tuple[ClipInfo | None, int]] = []
    try:
        t0 = time.monotonic()
        while capture_streams_on_vmic(env) <= base:  # ready = the stack opened the mic (seen from outside)
            if time.monotonic() - t0 > 300 or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{stack} did not open the virtual mic; see its log in {out}")
            time.sleep(0.5)
        print(f"{stack}: listening after {time.monotonic() - t0:.1f} s", flush=True)
        time.sleep(2.0)
        pcms = {c.name: read_pcm(c.path) for c in clips}
        feeds.append((None, run_turn(env, mic, spk, pcms[clips[0].name], "warm-up")))
        for c in clips:
            feeds.append((c, run_turn(env, mic, spk, pcms[c.name], c.name)))
    finally:
        stop_stack(procs)
        end_t = time.monotonic()
        mic_pcm = mic.stop()
        spk_pcm = spk.stop()
    result.notes.append(f"anchor drift over the run: mic {mic.drift_ms():+.1f} ms, speaker {spk.drift_ms():+.1f} ms")
    spk_lv = np.array(spk.levels)
    events = _voicecli_events(out / "voicecli-events.jsonl") if stack == "voicecli" else None
    for k, (fed, at) in enumerate(feeds):
        if fed is None:  # the warm-up turn
            continue
        c = fed
        pcm = pcms[c.name]
        start = locate(mic_pcm, pcm, at - MIC_RATE, at + len(pcm) + 2 * MIC_RATE)
        mic_anchor = mic.anchor(mic.anchor(end_t, 1e9) + start / MIC_RATE)
        speech_end_t = mic_anchor + (start + c.speech_end_s * MIC_RATE) / MIC_RATE
        nxt = feeds[k + 1][1] if k + 1 < len(feeds) else None
        window_end_t = mic_anchor + nxt / MIC_RATE if nxt is not None else end_t
        turn = Turn(c.name, start, speech_end_t, window_end_t)
        if events is not None:
            clip_t = mic_anchor + start / MIC_RATE
            inside = [e for e in events if clip_t <= float(e["t"]) < window_end_t]
            turn.turns_ended = sum(1 for e in inside if e.get("kind") == "eou")
            turn.verdicts = [_verdict(e) for e in inside if e.get("kind") == "end_of_turn"]
        spk_anchor = spk.anchor(speech_end_t)
        w0 = int(np.ceil((speech_end_t - spk_anchor) / spk.win_s))
        w1 = int((window_end_t - spk_anchor) / spk.win_s)
        loud = np.flatnonzero(spk_lv[w0:w1] > ONSET_DBFS)
        if loud.size:
            turn.ttfa_s = spk_anchor + (w0 + loud[0]) * spk.win_s - speech_end_t
            before = spk_lv[max(w0 - int(0.1 / spk.win_s), 0) : w0]
            turn.early = bool((before > ONSET_DBFS).any())
        result.turns.append(turn)
    np.save(out / f"{stack}-speaker-reads.npy", np.array(spk.reads))  # for auditing the anchors
    np.save(out / f"{stack}-mic-reads.npy", np.array(mic.reads))
    np.save(out / f"{stack}-speaker.npy", spk_pcm)
    np.save(out / f"{stack}-mic.npy", mic_pcm)
    return result


def _voicecli_events(events: Path) -> list[dict[str, Any]]:
    """voicecli's events file (`talk --events`); its times are CLOCK_MONOTONIC, as this script's."""
    if not events.exists():
        return []
    return [json.loads(line) for line in events.read_text().splitlines() if line.strip()]


def _verdict(e: dict[str, Any]) -> str:
    p = "" if e.get("p") is None else f" p={float(e['p']):.2f}"
    return f"{e.get('verdict')} by {e.get('by')}{p}: {e.get('text', '')!r}"


# ----------------------------------------------------------------------------------------------- pipecat bot


def pipecat_bot(llm_url: str, llm_model: str, system_prompt: str) -> None:
    """pipecat's local voice bot with its own defaults: Silero VAD, Smart Turn v3, faster-whisper, OpenAI-compatible
    LLM (streaming), Piper, LocalAudioTransport (PyAudio) on the virtual mic and speaker."""
    import asyncio

    import pyaudio
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.transports.local.audio import LocalAudioTransport, LocalAudioTransportParams
    from pipecat.workers.runner import WorkerRunner

    def device(name: str) -> int:
        pa = pyaudio.PyAudio()
        try:
            for i in range(pa.get_device_count()):
                if name in str(pa.get_device_info_by_index(i)["name"]):
                    return i
        finally:
            pa.terminate()
        raise SystemExit(f"no PortAudio device named {name}")

    transport = LocalAudioTransport(
        LocalAudioTransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            input_device_index=device("voicecli_mic"),
            output_device_index=device("voicecli_speaker"),
        )
    )
    # pipecat's defaults otherwise: device "auto", compute_type "default", faster-whisper's transcribe() defaults.
    stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=str(WHISPER_DIR)))
    llm = OpenAILLMService(api_key="local", base_url=llm_url, settings=OpenAILLMService.Settings(model=llm_model))
    tts = PiperTTSService(settings=PiperTTSService.Settings(voice=PIPER_VOICE), download_dir=PIPER_DIR)
    # The same system prompt as voicecli's default, so both prompts cost the same.
    context = LLMContext([{"role": "system", "content": system_prompt}])
    # Default user turn strategies: VAD start, Smart Turn v3 (local ONNX) stop; Silero with default VADParams.
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline(
        [transport.input(), stt, aggregators.user(), llm, tts, transport.output(), aggregators.assistant()]
    )

    async def serve() -> None:
        await WorkerRunner(handle_sigint=True).run(PipelineWorker(pipeline, params=PipelineParams()))

    asyncio.run(serve())


# ----------------------------------------------------------------------------------------------- report


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def versions() -> dict[str, str]:
    def pip_version(venv: Path, pkgs: list[str]) -> dict[str, str]:
        code = "import importlib.metadata as m,sys;print(*[p+'=='+m.version(p) for p in sys.argv[1:]])"
        out = subprocess.run([str(venv / "bin/python"), "-c", code, *pkgs], capture_output=True, text=True).stdout
        return dict(s.split("==") for s in out.split())

    v = {"python": platform.python_version()}
    v |= {f"voicecli-venv {k}": x for k, x in pip_version(OWN_VENV, ["voicecli", "faster-whisper",
          "ctranslate2", "llama_cpp_python", "piper-tts", "onnxruntime"]).items()}  # fmt: skip
    v |= {f"pipecat-venv {k}": x for k, x in pip_version(PIPECAT_VENV, ["pipecat-ai", "faster-whisper",
          "ctranslate2", "llama_cpp_python", "piper-tts", "onnxruntime", "PyAudio", "openai"]).items()}  # fmt: skip
    v["pulseaudio"] = subprocess.run(["pulseaudio", "--version"], capture_output=True, text=True).stdout.strip()
    return v


def report(results: list[StackResult], out: Path, clips: list[ClipInfo], models: ModelSet) -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True,
               text=True).stdout.splitlines() if ln.startswith("Model name")), "?")  # fmt: skip
    doc: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "versions": versions(),
                           "models": {"set": models.name, "stt": str(models.stt), "llm": str(models.llm),
                                      "tts": str(models.voice), "judge": str(JUDGE_GGUF)},
                           "clips": [asdict(c) for c in clips], "stacks": {}}  # fmt: skip
    for r in results:
        ok = [t.ttfa_s for t in r.turns if t.ttfa_s is not None and not t.early]
        complete = [t.ttfa_s for t in r.turns if t.complete and t.ttfa_s is not None and not t.early]
        paused = [t for t in r.turns if t.paused]
        summary: dict[str, Any] = {"p50_s": pct(ok, 50), "p95_s": pct(ok, 95), "n": len(ok),
                   "misses": [t.clip for t in r.turns if t.ttfa_s is None],
                   "early": [t.clip for t in r.turns if t.early],
                   "complete_p50_s": pct(complete, 50), "complete_p95_s": pct(complete, 95),
                   "complete_n": len(complete), "paused_n": len(paused),
                   "paused_split": [t.clip for t in paused if t.split]}  # fmt: skip
        doc["stacks"][r.stack] = {"summary": summary, "turns": [asdict(t) for t in r.turns], "notes": r.notes}
        print(f"\n{r.stack}  (CPU: {cpu})")
        for t in r.turns:
            v = (
                "miss"
                if t.ttfa_s is None
                else f"{t.ttfa_s * 1000:7.0f} ms" + ("  EARLY (split turn)" if t.early else "")
            )
            if t.turns_ended is not None and t.turns_ended != 1:
                v += f"  ({t.turns_ended} ends of turn)"
            v += "".join(f"\n{'':<20}{x}" for x in t.verdicts)
            print(f"  {t.clip:<16} {v}")
        fmt = lambda x: "-" if x is None else f"{x * 1000:.0f} ms"  # noqa: E731
        print(f"  p50 {fmt(summary['p50_s'])}  p95 {fmt(summary['p95_s'])}  n {summary['n']}  "
              f"misses {len(summary['misses'])}  early {len(summary['early'])}")  # fmt: skip
        print(f"  complete clips ({summary['complete_n']}): p50 {fmt(summary['complete_p50_s'])}  "
              f"p95 {fmt(summary['complete_p95_s'])};  paused clips split: {len(summary['paused_split'])} of "
              f"{summary['paused_n']}")  # fmt: skip
        for n in r.notes:
            print(f"  note: {n}")
    s = doc["stacks"]
    if "voicecli" in s and "pipecat" in s and s["voicecli"]["summary"]["p50_s"] and s["pipecat"]["summary"]["p50_s"]:
        doc["ratio_p50_pipecat_over_voicecli"] = s["pipecat"]["summary"]["p50_s"] / s["voicecli"]["summary"]["p50_s"]
        print(f"\nratio p50 pipecat / voicecli: {doc['ratio_p50_pipecat_over_voicecli']:.2f}x")
    (out / "result.json").write_text(json.dumps(doc, indent=1))
    print(f"saved {out / 'result.json'}")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, default=Path("/tmp/pc"))
    r.add_argument("--stacks", default="voicecli,pipecat")
    r.add_argument("--clips", type=int, default=12, help="fewer clips for a smoke test")
    r.add_argument("--models", choices=("target", "tiny"), default="target",
                   help="target: whisper base, the real-size 0.5B, Piper joe; tiny: real tiny.en, tiny generated "
                        "LLM and voice (voicecli only)")  # fmt: skip
    b = sub.add_parser("pipecat-bot")
    b.add_argument("--llm-url", required=True)
    b.add_argument("--llm-model", required=True)
    b.add_argument("--system", required=True)
    a = ap.parse_args()
    if a.cmd == "pipecat-bot":
        pipecat_bot(a.llm_url, a.llm_model, a.system)
        return
    models = TARGET if a.models == "target" else tiny_set()
    if models is not TARGET and "pipecat" in a.stacks.split(","):
        ap.error("--models tiny measures voicecli only: pass --stacks voicecli")
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    clips = write_clips(out)[: a.clips]
    rig = out / "vsound"
    env = rig_env(rig)
    results = []
    try:
        for stack in a.stacks.split(","):
            print(f"== {stack}", flush=True)
            results.append(measure_stack(stack, env, clips, out, models))
    finally:
        rig_stop(rig)
    report(results, out, clips, models)


if __name__ == "__main__":
    main()
