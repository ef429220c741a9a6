"""How a followed generation is shown: a live progress bar on a terminal, plain lines
(fit for CI logs) anywhere else. Both are fed the same events."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from services.cli.client.follow import Reconnecting, StreamEvent


class Renderer(Protocol):
    """Receives each event of a followed generation."""

    def event(self, event: StreamEvent) -> None:
        """Show one event."""

    def reconnecting(self, note: Reconnecting) -> None:
        """Say that the connection dropped and is being resumed."""

    def close(self) -> None:
        """Stop drawing (the bar stays on screen)."""


def describe(event: StreamEvent) -> str | None:
    """One line for an event a person wants to see; None for the ones they do not."""
    data = event.data
    kind = event.type
    if kind == "generation.requested":
        return f"requested {data.get('kind', 'create')} of {data.get('project_name')!r} v{data.get('version')}"
    if kind == "generation.started":
        return f"started on {data.get('worker')} with the {data.get('provider')} provider"
    if kind == "generation.resumed":
        return f"resumed at phase {data.get('from_phase')} (attempt {data.get('attempt')})"
    if kind == "phase.started":
        return f"phase {data.get('phase')} started"
    if kind == "phase.completed":
        return (
            f"phase {data.get('phase')} completed in {data.get('duration_ms')} ms "
            f"({data.get('progress')}%)"
        )
    if kind == "file.written":
        return f"  wrote {data.get('path')} ({data.get('size')} B)"
    if kind == "file.deleted":
        return f"  deleted {data.get('path')}: {data.get('reason')}"
    if kind == "llm.retrying":
        return f"  rate limited, retrying in {float(data.get('delay_s', 0)):.0f} s"
    if kind == "llm.called":
        return (
            f"  {data.get('provider')} {data.get('model')}: {data.get('tokens_in')} tokens in, "
            f"{data.get('tokens_out')} out, {data.get('latency_ms')} ms"
        )
    if kind == "generation.completed":
        return f"completed: {data.get('file_count')} files, {data.get('total_bytes')} bytes"
    if kind == "generation.failed":
        return (
            f"FAILED in phase {data.get('phase')}: {data.get('message')} "
            f"({data.get('files_kept')} files kept)"
        )
    if kind == "generation.cancelled":
        return f"cancelled: {data.get('reason')} ({data.get('files_kept')} files kept)"
    return None


class PlainRenderer:
    """One timestamped line per event worth a line."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.started = time.monotonic()

    def event(self, event: StreamEvent) -> None:
        """Print the event's line, if it has one."""
        line = describe(event)
        if line is not None:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:6.1f}s] {line}", file=self.out, flush=True)

    def reconnecting(self, note: Reconnecting) -> None:
        """Print that the stream is being resumed."""
        print(
            f"         {note.reason}; resuming after event {note.after_id}",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        """Nothing to stop."""


class BarRenderer:
    """A live bar: phase, percent, files written, elapsed time; notable lines above it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.files = 0
        self.progress = Progress(
            TextColumn("[bold]{task.fields[phase]:<8}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[files]} files"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=self.console,
        )
        self.task: TaskID = self.progress.add_task("", total=100, phase="pending", files=0, note="")
        self.progress.start()

    def event(self, event: StreamEvent) -> None:
        """Move the bar, and print what a person should not miss."""
        data: dict[str, Any] = event.data
        fields: dict[str, Any] = {"note": ""}
        if event.type == "file.written":
            self.files += 1
        elif event.type == "file.deleted":
            self.files = max(0, self.files - 1)
        if data.get("phase"):
            fields["phase"] = data["phase"]
        if event.type == "llm.retrying":
            fields["note"] = f"rate limited, retrying in {float(data.get('delay_s', 0)):.0f} s"
        progress = data.get("progress")
        self.progress.update(
            self.task,
            completed=progress if isinstance(progress, int) else None,
            files=self.files,
            **fields,
        )
        if event.type.startswith("generation.") or event.type == "phase.completed":
            line = describe(event)
            if line:
                self.progress.console.print(line)

    def reconnecting(self, note: Reconnecting) -> None:
        """Show the reconnection on the bar."""
        self.progress.update(self.task, note=f"reconnecting ({note.reason})")

    def close(self) -> None:
        """Leave the final bar on screen."""
        self.progress.stop()


def renderer_for(out: TextIO | None = None) -> Renderer:
    """A bar on a terminal, plain lines otherwise."""
    stream = out or sys.stdout
    if stream.isatty():
        return BarRenderer(Console(file=stream))
    return PlainRenderer(stream)
