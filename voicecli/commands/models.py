"""`voicecli models list | pull | verify`: what is known, what is present, download, re-check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from voicecli import config, models

app = typer.Typer(
    no_args_is_help=True,
    help="List, download (pull) and verify the model files. Models run fully offline once pulled.",
)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Models directory (default: config models.dir, else the data dir)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]

STATE_STYLE = {
    "present": "green",
    "ok": "green",
    "unverified": "yellow",
    "missing": "dim",
    "corrupt": "bold red",
}


def _dir(option: Path | None) -> Path:
    return option.expanduser() if option else models.models_dir(config.load().models.dir)


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size else "?"


def _short(path: Path) -> str:
    """`path` with the home directory written as ~."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _print_table(console: Console, rows: list[models.ModelStatus], models_dir: Path, title: str) -> None:
    """One model per two lines at any width: name, kind, default, size and state in aligned columns, then
    its path (relative to the models directory, which the title names) on a line of its own, since a
    path column squeezed beside the others folds into a tall strip on an 80-column terminal. Row lines
    wider than the terminal end in an ellipsis instead of wrapping; the title folds (it names the dir)."""
    console.print(Text(f"{title} {_short(models_dir)}", style="bold"), overflow="fold")
    headers = ("name", "kind", "default", "size", "state")
    cells = [(r.name, r.kind, "yes" if r.default else "", _mb(r.size), r.state) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: tuple[str, ...], styles: tuple[str, ...]) -> Text:
        text = Text()
        for i, (value, style, width) in enumerate(zip(values, styles, widths, strict=True)):
            text.append("  ")
            text.append(value.rjust(width) if headers[i] == "size" else value.ljust(width), style=style)
        text.rstrip()
        return text

    console.print(line(headers, ("bold",) * len(headers)), no_wrap=True, overflow="ellipsis")
    for r, c in zip(rows, cells, strict=True):
        console.print(line(c, ("", "", "", "", STATE_STYLE.get(r.state, ""))), no_wrap=True, overflow="ellipsis")
        path = Path(r.path)
        try:
            shown = str(path.relative_to(models_dir))
        except ValueError:
            shown = _short(path)
        if r.kind == "stt":  # a faster-whisper model is a directory
            shown += "/"
        console.print(Text("    " + shown, style="dim"), no_wrap=True, overflow="ellipsis")


@app.command("list")
def list_models(json_out: JsonOption = False, models_dir: DirOption = None) -> None:
    """Show the known models, which are the defaults, and which are present on disk."""
    d = _dir(models_dir)
    rows = models.status(d)
    if json_out:
        typer.echo(json.dumps({"models_dir": str(d), "models": [r.as_dict() for r in rows]}, indent=2))
        return
    console = Console()
    _print_table(console, rows, d, "models in")
    missing = [r.name for r in rows if r.default and r.state != "present"]
    if missing:
        console.print(f"[yellow]get the defaults with:[/] voicecli models pull {' '.join(missing)}")


@app.command("pull")
def pull(
    names: Annotated[
        list[str] | None, typer.Argument(help="Model names (default: the three defaults and the end-of-turn judge).")
    ] = None,
    models_dir: DirOption = None,
) -> None:
    """Download models with progress, resuming partial downloads and checking each sha256."""
    d = _dir(models_dir)
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        results = models.pull(names or [], d, progress)
    out = Console()
    for r in results:
        if r.state == "unverified":
            out.print(f"[yellow]unverified[/] {r.path}: no sha256 in the manifest; computed {r.sha256}")
        else:
            out.print(f"[green]{r.state}[/] {r.path} ({_mb(r.size)}, sha256 ok)")
    out.print(f"models are in {d}")


@app.command("verify")
def verify(json_out: JsonOption = False, models_dir: DirOption = None) -> None:
    """Re-check the size and sha256 of every pulled model. Exits non-zero if anything is corrupt."""
    d = _dir(models_dir)
    rows = models.verify(d)
    bad = [r for r in rows if r.state == "corrupt"]
    if json_out:
        typer.echo(json.dumps({"models_dir": str(d), "models": [r.as_dict() for r in rows]}, indent=2))
    else:
        console = Console()
        _print_table(console, rows, d, "verified")
        for r in bad:
            for p in r.problems:
                console.print(f"[red]{r.name}:[/] {p}")
            console.print(f"[yellow]fix with:[/] voicecli models pull {r.name}")
    if bad:
        raise typer.Exit(code=4)
