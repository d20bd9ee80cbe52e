"""`voicecli devices`: list, test and pick the audio input and output."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from voicecli.audio.format import FRAME_MS, float32_to_int16, peak_dbfs, rms_dbfs
from voicecli.errors import DeviceError

TONE_HZ = 440.0
TONE_DBFS = -12.0  # peak level of the test tone: clearly audible, never harsh
TONE_SECONDS = 0.8
METER_FLOOR_DBFS = -60.0


def devices(
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    input: str | None = typer.Option(None, "--input", "-i", help="Input device: index or name substring."),
    output: str | None = typer.Option(None, "--output", "-o", help="Output device: index or name substring."),
    test: bool = typer.Option(
        False, "--test", help="Record from the input with a live level meter, then play a test tone."
    ),
    seconds: float = typer.Option(3.0, "--seconds", min=0.5, max=60.0, help="Recording length for --test."),
    echo_check: bool = typer.Option(
        True, "--echo-check/--no-echo-check", help="With --test: measure how the speaker comes back into the mic."
    ),
    save: bool = typer.Option(False, "--save", help="Store --input/--output in the config file for `talk`."),
) -> None:
    """List audio devices; --test checks the microphone level and the speaker."""
    from voicecli import config
    from voicecli.audio.devices import list_devices, resolve_input, resolve_output

    console = Console()
    devs = list_devices()
    if not devs:
        from voicecli.audio.devices import NO_DEVICES_HINT

        raise DeviceError("no audio devices found", hint=NO_DEVICES_HINT)
    audio_cfg = config.load().audio
    in_spec = input if input is not None else audio_cfg.input
    out_spec = output if output is not None else audio_cfg.output
    in_idx = _chosen(resolve_input, in_spec, strict=test or input is not None)
    out_idx = _chosen(resolve_output, out_spec, strict=test or output is not None)

    if save:
        if input is None and output is None:
            raise DeviceError("nothing to save", hint="pass --input and/or --output together with --save")
        updates: dict[str, Any] = {}
        if input is not None:
            updates["input"] = devs[in_idx].name if in_idx is not None else ""
        if output is not None:
            updates["output"] = devs[out_idx].name if out_idx is not None else ""
        path = config.save({"audio": updates})
        if not json_out:
            console.print(f"saved {updates} to {path}")

    if test:
        result = asyncio.run(_run_test(in_idx, out_idx, seconds, echo_check, None if json_out else console))
        if json_out:
            print(json.dumps(result, indent=2))
        return
    if json_out:
        print(json.dumps({"devices": [asdict(d) for d in devs], "input": in_idx, "output": out_idx}, indent=2))
        return
    console.print(_table(devs, in_idx, out_idx))


def _chosen(resolve: Any, spec: str, *, strict: bool) -> int | None:
    """Resolve a device choice; a stale saved choice only warns when merely listing."""
    try:
        return resolve(spec) if (strict or spec) else None
    except DeviceError as exc:
        if strict:
            raise
        Console(stderr=True).print(f"[yellow]warning:[/] saved device choice: {exc.message}")
        return None


def _table(devs: list[Any], in_idx: int | None, out_idx: int | None) -> Table:
    table = Table(title="audio devices (* = system default, > = chosen)")
    for col in ("#", "name", "host API", "in", "out", "rate", "default", "16 kHz mono"):
        table.add_column(col, justify="right" if col in ("#", "in", "out", "rate") else "left")
    for d in devs:
        marks = []
        if d.is_default_input:
            marks.append("*in")
        if d.is_default_output:
            marks.append("*out")
        if d.index == in_idx:
            marks.append(">in")
        if d.index == out_idx:
            marks.append(">out")
        table.add_row(
            str(d.index),
            d.name,
            d.hostapi,
            str(d.max_input_channels),
            str(d.max_output_channels),
            f"{d.default_samplerate:g}",
            " ".join(marks),
            "yes" if d.accepts_16k_mono_int16 else ("no" if d.max_input_channels else "-"),
        )
    return table


def _meter(peak: float, rms: float, left: float) -> Text:
    width = 40
    fill = int(width * (max(rms, METER_FLOOR_DBFS) - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS)
    tip = int(width * (max(peak, METER_FLOOR_DBFS) - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS)
    bar = "#" * fill + " " * max(0, tip - fill - 1) + ("|" if tip > fill else "") + " " * (width - max(tip, fill))
    style = "red" if peak > -1.0 else ("green" if rms > -45.0 else "yellow")
    return Text.assemble(
        ("recording ", "bold"), (f"{left:4.1f}s ", "dim"), (f"[{bar}]", style),
        f"  peak {peak:6.1f} dBFS  rms {rms:6.1f} dBFS",
    )  # fmt: skip


async def _record(in_idx: int | None, seconds: float, console: Console | None) -> dict[str, Any]:
    from voicecli.audio.capture import Capture

    cap = Capture(in_idx)
    await cap.start()
    frames_needed = int(seconds * 1000 / FRAME_MS)
    chunks: list[np.ndarray] = []
    live = Live(_meter(-120.0, -120.0, seconds), console=console, transient=True) if console else None
    try:
        if live:
            live.start()
        async for frame in cap.frames():
            chunks.append(frame.pcm)
            if live and len(chunks) % 5 == 0:  # refresh every 100 ms
                recent = np.concatenate(chunks[-5:])
                left = (frames_needed - len(chunks)) * FRAME_MS / 1000
                live.update(_meter(peak_dbfs(recent), rms_dbfs(recent), left))
            if len(chunks) >= frames_needed:
                break
    finally:
        if live:
            live.stop()
        await cap.stop()
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    stats = cap.stats
    return {
        "index": in_idx,
        "name": stats.device,
        "rate": stats.rate,
        "resampled": stats.resampled,
        "seconds": pcm.size / 16000,
        "rms_dbfs": round(rms_dbfs(pcm), 2),
        "peak_dbfs": round(peak_dbfs(pcm), 2),
        "overrun_samples": stats.overrun_samples,
        "silence_warning": cap.silence_warning,
        "callback_ms": stats.callback_ms,
    }


async def _play_tone(out_idx: int | None) -> dict[str, Any]:
    from voicecli.audio.playback import Playback

    pb = Playback(out_idx)
    await pb.start()
    try:
        t = np.arange(int(TONE_SECONDS * pb.rate)) / pb.rate
        fade = np.minimum(1.0, np.minimum(t, TONE_SECONDS - t) / 0.02)  # 20 ms ramps: no clicks
        tone = float32_to_int16(10 ** (TONE_DBFS / 20) * np.sin(2 * np.pi * TONE_HZ * t) * fade)
        pb.begin_reply(1)
        await pb.write(tone)
        pb.end_reply()
        await pb.wait_reply_done(1)
        stats = pb.stats
        return {
            "index": out_idx,
            "name": stats.device,
            "rate": pb.rate,
            "tone_hz": TONE_HZ,
            "tone_peak_dbfs": TONE_DBFS,
            "played_seconds": pb.played_samples(1) / pb.rate,
            "underruns": stats.underruns,
            "callback_ms": stats.callback_ms,
        }
    finally:
        await pb.stop()


async def _run_test(
    in_idx: int | None, out_idx: int | None, seconds: float, echo_check: bool, console: Console | None
) -> dict[str, Any]:
    rec = await _record(in_idx, seconds, console)
    if console:
        console.print(
            f"input [bold]{rec['name']}[/] ({rec['rate']} Hz): rms {rec['rms_dbfs']:.1f} dBFS, "
            f"peak {rec['peak_dbfs']:.1f} dBFS over {rec['seconds']:.1f} s"
        )
        if rec["silence_warning"]:
            console.print(f"[yellow]warning:[/] {rec['silence_warning']}")
        elif rec["peak_dbfs"] < -50:
            console.print("[yellow]warning:[/] very quiet: is this the right microphone, and is it unmuted?")
        console.print(f"playing a {TONE_HZ:g} Hz test tone on the output ...")
    out = await _play_tone(out_idx)
    if console:
        console.print(f"output [bold]{out['name']}[/] ({out['rate']} Hz): played {out['played_seconds']:.2f} s")
    result = {"input": rec, "output": out}
    if echo_check:
        result["echo"] = await _echo(in_idx, out_idx, console)
    return result


async def _echo(in_idx: int | None, out_idx: int | None, console: Console | None) -> dict[str, Any]:
    """The echo check: a few seconds of noise on the speaker, recorded through the echo canceller."""
    from voicecli.audio import echo_check
    from voicecli.errors import ConfigError

    if console:
        console.print(f"echo check: playing {echo_check.PROBE_SECONDS:g} s of noise while recording ...")
    try:
        check = await echo_check.measure(in_idx, out_idx)
    except ConfigError as exc:  # the canceller is not installed: the rest of the test still stands
        if console:
            console.print(f"[yellow]echo check skipped:[/] {exc.message} ({exc.hint})")
        return {"skipped": exc.message}
    if console:
        console.print(_echo_line(check))
    return check.as_dict()


def _echo_line(check: Any) -> str:
    if not check.heard:
        return (
            f"echo: not heard (mic {check.mic_dbfs:.1f} dBFS while playing, room {check.room_dbfs:.1f} dBFS): "
            "headphones, or the mic does not pick up this speaker; any --echo mode works"
        )
    advice = (
        "barge-in over the speaker works with --echo auto (or aec)"
        if (check.erle_db or 0.0) >= 20.0
        else "the canceller removes little here: use --echo half-duplex, or headphones"
    )
    level = "an unmeasured level" if check.level_db is None else f"{check.level_db:+.1f} dB"
    return (
        f"echo: heard {check.delay_ms:.0f} ms after playing, at {level}; "
        f"the canceller removed {check.erle_db:.1f} dB (residual {check.residual_dbfs:.1f} dBFS). {advice}"
    )
