"""The `voicecli` command line. Heavy imports (engines, audio) happen inside commands."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from voicecli.errors import VoicecliError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="A fully local voice assistant: talk to it, it answers out loud, interrupt it any time.",
)


def _register() -> None:
    from voicecli.commands import bench, devices, models, talk

    app.command("talk")(talk.talk)
    app.command("bench")(bench.bench)
    app.command("devices")(devices.devices)
    app.add_typer(models.app, name="models", help="List, pull and verify the model files.")


_register()


def main() -> None:
    err = Console(stderr=True)
    try:
        app()
    except VoicecliError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}")  # messages may hold [brackets]
        if exc.hint:
            err.print(f"[yellow]hint:[/] {escape(exc.hint)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[dim]interrupted[/]")
        sys.exit(130)
