"""`voicecli talk`: the conversation, with a live terminal view."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from voicecli import config
from voicecli.events import Event, EventLog

STATE_STYLE = {
    "listening": ("listening", "green"),
    "hearing": ("hearing you", "bold cyan"),
    "thinking": ("thinking", "yellow"),
    "speaking": ("speaking", "magenta"),
}


def _fmt_s(value: float | None) -> Text:
    if value is None:
        return Text("-", style="dim")
    return Text(f"{value * 1000:.0f}ms", style="red" if value > 1.0 else "green")


def latency_line(turn: int, timings: dict[str, Any]) -> Text:
    """One line per turn: TTFA and the stages, red above 1 s."""
    line = Text(f"turn {turn}: ", style="bold")
    line.append("TTFA ")
    line.append_text(_fmt_s(timings.get("ttfa")))
    for label, key in (
        ("confirm", "confirm"),
        ("stt", "stt"),
        ("llm ttft", "llm_ttft"),
        ("1st clause", "first_clause"),
        ("tts 1st audio", "tts_first_audio"),
    ):
        line.append(f"  {label} ")
        line.append_text(_fmt_s(timings.get(key)))
    if timings.get("interrupted"):
        line.append("  (interrupted)", style="yellow")
    if timings.get("underruns"):
        line.append(f"  underruns {timings['underruns']}", style="red")
    return line


class TalkView:
    """Turns pipeline events into a live view: state, mic level, your words, the reply as it streams."""

    def __init__(self) -> None:
        self.state = "listening"
        self.level = -120.0
        self.user = ""
        self.reply = ""
        self.history: deque[Text] = deque(maxlen=6)
        self.warnings: deque[str] = deque(maxlen=3)

    def on_event(self, ev: Event) -> None:
        d = ev.data
        if ev.kind == "state":
            self.state = d["state"]
        elif ev.kind == "mic_level":
            self.level = float(d["dbfs"])
        elif ev.kind == "speech_start" and self.state in ("listening", "hearing"):
            self.user = "..."
        elif ev.kind == "stt_done" and d.get("is_speech"):
            self.user = str(d["text"])
            self.reply = ""
        elif ev.kind == "llm_delta":
            self.reply += str(d["text"])
        elif ev.kind == "turn_end":
            self.history.append(Text(f"you: {d['user']}", style="cyan"))
            said = d["assistant"] + (" [interrupted]" if d["interrupted"] else "")
            self.history.append(Text(f"assistant: {said}", style="magenta"))
            self.history.append(latency_line(ev.turn_id, d["timings"]))
            self.reply = ""
            self.user = ""
        elif ev.kind in ("warning", "error"):
            self.warnings.append(str(d.get("message", "")))

    def render(self) -> Group:
        label, style = STATE_STYLE.get(self.state, (self.state, "white"))
        meter_len = int(max(0.0, min(1.0, (self.level + 70.0) / 70.0)) * 30)
        head = Text.assemble(
            (f"● {label:<12}", style),
            ("  mic ", "dim"),
            ("█" * meter_len + "·" * (30 - meter_len), "green" if self.level > -45 else "dim"),
            (f" {self.level:6.1f} dBFS", "dim"),
        )
        lines: list[Text] = [head, *self.history]
        if self.user:
            lines.append(Text(f"you: {self.user}", style="bold cyan"))
        if self.reply:
            lines.append(Text(f"assistant: {self.reply}", style="bold magenta"))
        lines.extend(Text(f"! {w}", style="yellow") for w in self.warnings)
        lines.append(Text("Ctrl-C to quit", style="dim"))
        return Group(*lines)


def talk(
    input: Annotated[str | None, typer.Option("--input", "-i", help="Input device (index or name).")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output device (index or name).")] = None,
    stt_model: Annotated[str | None, typer.Option("--stt", help="Whisper model name or directory.")] = None,
    llm_model: Annotated[str | None, typer.Option("--llm", help="LLM name or .gguf path.")] = None,
    llm_url: Annotated[
        str | None,
        typer.Option(
            "--llm-url",
            help="Use an OpenAI-compatible LLM server instead of the local model, e.g. http://HOST:8080/v1 "
            "(llama-server, llama_cpp.server, Ollama, vLLM; see docs/remote-llm.md).",
        ),
    ] = None,
    llm_server_model: Annotated[
        str | None,
        typer.Option("--llm-model", help="Model name on the --llm-url server (default: the first it lists)."),
    ] = None,
    voice: Annotated[str | None, typer.Option("--voice", help="Piper voice name or .onnx path.")] = None,
    models_dir: Annotated[str | None, typer.Option("--models-dir", help="Where pulled models live.")] = None,
    system_prompt: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    speed: Annotated[float | None, typer.Option(help="Speech speed (1.0 = normal).")] = None,
    speaker: Annotated[int | None, typer.Option(help="Speaker id of a multi-speaker voice.")] = None,
    vad_aggressiveness: Annotated[int | None, typer.Option(help="webrtcvad aggressiveness 0-3.")] = None,
    hangover_ms: Annotated[int | None, typer.Option(help="Silence that ends your turn (ms).")] = None,
    barge_in: Annotated[
        bool | None,
        typer.Option("--barge-in/--no-barge-in", help="Let you interrupt (full duplex) or not (half duplex)."),
    ] = None,
    echo: Annotated[
        str | None,
        typer.Option(
            "--echo",
            help="Speakers and mic together: auto | aec (cancel the echo, interrupt any time) | "
            "half-duplex (mic ignored while it speaks) | off (headphones).",
        ),
    ] = None,
    max_turns: Annotated[int | None, typer.Option(help="Exit after N answered turns.")] = None,
    events: Annotated[Path | None, typer.Option(help="Write every pipeline event as JSON lines.")] = None,
    transcript_file: Annotated[
        Path | None, typer.Option("--transcript", help="Session transcript (default: the data dir).")
    ] = None,
    plain: Annotated[bool, typer.Option(help="Print lines instead of the live view.")] = False,
) -> None:
    """Talk with the assistant: speak, it answers out loud; talk over it to interrupt."""
    from voicecli.pipeline import wiring
    from voicecli.pipeline.transcript import TranscriptLog, new_session_path

    cfg = config.load(
        {
            "audio": {"input": input, "output": output, "echo": echo},
            "models": {"stt": stt_model, "llm": llm_model, "tts": voice, "dir": models_dir},
            "llm": {"system_prompt": system_prompt, "url": llm_url, "model": llm_server_model},
            "tts": {"speed": speed, "speaker": speaker},
            "vad": {"aggressiveness": vad_aggressiveness, "hangover_ms": hangover_ms},
            "talk": {"barge_in": barge_in},
        }
    )
    console = Console()
    view = TalkView()
    log = EventLog(events) if events else None
    transcript = TranscriptLog(transcript_file or new_session_path())

    def emit(ev: Event) -> None:
        if log is not None:
            log(ev)
        view.on_event(ev)
        if plain and ev.kind == "turn_end":
            console.print(f"you: {ev.data['user']}")
            console.print(f"assistant: {ev.data['assistant']}")
            console.print(latency_line(ev.turn_id, ev.data["timings"]))
        elif plain and ev.kind in ("warning", "error"):
            console.print(f"[yellow]! {ev.data.get('message', '')}[/]")

    console.print("[dim]loading models ...[/]")
    try:
        if plain or not console.is_terminal:
            asyncio.run(wiring.converse(cfg, max_turns=max_turns, emit=emit, transcript=transcript))
        else:
            with Live(view.render(), console=console, refresh_per_second=10, transient=False) as live:

                async def main() -> None:
                    async def refresh() -> None:
                        while True:
                            live.update(view.render())
                            await asyncio.sleep(0.1)

                    task = asyncio.create_task(refresh())
                    try:
                        await wiring.converse(cfg, max_turns=max_turns, emit=emit, transcript=transcript)
                    finally:
                        task.cancel()
                        live.update(view.render())

                asyncio.run(main())
    finally:
        error = transcript.close()
        if error is not None:
            console.print(f"[yellow]! the transcript could not be written: {error}[/]")
        if log is not None:
            log.close()
    if transcript.path.exists():
        console.print(f"[dim]session saved to {transcript.path}[/]")
