"""How a followed generation is shown: a live progress bar on a terminal, plain lines fit
for CI logs anywhere else. Both are fed the same events."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from contracts.events import (
    FileDeleted,
    FileWritten,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationResumed,
    GenerationStarted,
    LlmRetrying,
    PhaseCompleted,
    PhaseProgress,
    PhaseStarted,
    RepairCompleted,
    RepairReverted,
    RepairStarted,
    VerifyCompleted,
    VerifyStarted,
    VerifyUnavailable,
    VersionBasedOn,
)
from services.cli.client.follow import Reconnecting, StreamEvent


class Renderer(Protocol):
    """Receives each event of a followed generation."""

    def event(self, event: StreamEvent) -> None:
        """Show one event."""

    def reconnecting(self, note: Reconnecting) -> None:
        """Say that the connection dropped and is being resumed."""

    def close(self) -> None:
        """Stop drawing (a bar stays on screen)."""


def verification_line(result: VerifyCompleted) -> str:
    """The verdict in one line: `tests: 20 passed · lint: clean · format: clean`."""
    counts = [f"{result.passed} passed"]
    counts += [
        f"{n} {word}"
        for n, word in (
            (result.failed, "failed"),
            (result.errors, "errors"),
            (result.skipped, "skipped"),
        )
        if n
    ]
    lint = f"{result.lint_findings} findings" if result.lint_findings else "clean"
    fmt = f"{result.format_findings} files to reformat" if result.format_findings else "clean"
    line = f"tests: {', '.join(counts)} · lint: {lint} · format: {fmt}"
    if result.compile_errors:
        line += f" · {len(result.compile_errors)} files do not compile"
    return line


def describe(event: StreamEvent) -> str | None:
    """One line for an event a person wants to see; None for the others."""
    match event.event:
        case GenerationRequested(kind=kind, project_name=name, version=version):
            return f"requested {kind} of {name!r} v{version}"
        case GenerationStarted(worker=worker, provider=provider, plan=plan):
            return f"started on {worker} with the {provider} provider, {len(plan)} phases"
        case GenerationResumed(from_phase=phase, attempt=attempt):
            return f"resumed at phase {phase} (attempt {attempt})"
        case PhaseStarted(phase=phase):
            return f"phase {phase} started"
        case PhaseCompleted(phase=phase, duration_ms=ms, progress=progress, files=files):
            return f"phase {phase} completed in {ms} ms, {len(files)} files ({progress}%)"
        case FileWritten(path=path, size=size, origin=origin):
            return (
                f"  wrote {path} ({size} B{', from the parent' if origin != 'generated' else ''})"
            )
        case VersionBasedOn(files=files):
            size = sum(f.size for f in files)
            return f"  kept {len(files)} files of the parent ({size} B), named by content"
        case FileDeleted(path=path, reason=reason):
            return f"  deleted {path}: {reason}"
        case LlmRetrying(phase=phase, reason=reason, delay_s=delay, attempt=attempt):
            return f"  retrying phase {phase} in {delay:.1f} s ({reason}, attempt {attempt})"
        case VerifyStarted(round=round_):
            after = f" after repair round {round_}" if round_ else ""
            return f"verifying{after}: the version's own tests, lint and compile check, sandboxed"
        case VerifyCompleted(verdict=verdict, failures=failures) as result:
            lines = [f"{verdict.upper().replace('_', ' ')}: {verification_line(result)}"]
            lines += [f"  {f.kind}: {f.test_id}: {_first_line(f.message)}" for f in failures[:5]]
            if len(failures) > 5:
                lines.append(f"  … and {len(failures) - 5} more")
            return "\n".join(lines)
        case VerifyUnavailable(reason=reason):
            return f"UNVERIFIED: {reason}"
        case RepairStarted() | RepairCompleted() | RepairReverted():
            return repair_line(event.event)
        case GenerationCompleted(file_count=count, total_bytes=size, duration_ms=ms):
            return f"completed: {count} files, {size} bytes in {ms / 1000:.1f} s"
        case GenerationFailed(phase=phase, message=message, files_kept=kept):
            return f"FAILED in phase {phase or '-'}: {message} ({kept} files kept)"
        case GenerationCancelled(by=by, reason=reason, phase=phase, files_kept=kept):
            return (
                f"CANCELLED by {by} in phase {phase or '-'}: {reason or 'no reason given'} "
                f"({kept} files kept)"
            )
    return None


def repair_line(event: RepairStarted | RepairCompleted | RepairReverted) -> str:
    """A repair round's step in one line (the page says it the same way)."""
    match event:
        case RepairStarted(round=round_, failing=failing, failing_count=count):
            tests = f"{count} test{'' if count == 1 else 's'}"
            named = f" ({', '.join(failing[:3])}{', …' if len(failing) > 3 else ''})"
            return f"repair round {round_}: {tests} failing{named if failing else ''}"
        case RepairCompleted(round=round_, outcome="changed", files_changed=files, deleted=gone):
            changed = ", ".join([*files, *(f"{p} (deleted)" for p in gone)])
            return f"repair round {round_} changed {changed}"
        case RepairCompleted(round=round_, outcome="unchanged"):
            return f"repair round {round_}: the model changed nothing"
        case RepairCompleted(round=round_, outcome="rejected", rules=rules):
            return f"REPAIR REJECTED: round {round_} broke the guard's rules: {', '.join(rules)}"
        case RepairCompleted(round=round_, reason=reason):
            return f"repair round {round_} failed: {reason}"
        case RepairReverted(round=round_, reason=reason):
            return f"REPAIR REVERTED: round {round_}: {reason}"
    raise AssertionError(event)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 160 else line[:159] + "…"


class PlainRenderer:
    """One line per phase start and end, file, retry and the end, timed from the first
    event (so a replay shows when things really happened)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.first_at: datetime | None = None

    def event(self, event: StreamEvent) -> None:
        """Print the event's line, if it has one."""
        line = describe(event)
        if line is None or event.event is None:
            return
        self.first_at = self.first_at or event.event.at
        elapsed = (event.event.at - self.first_at).total_seconds()
        stamp = f"[{elapsed:6.1f}s] "
        # A multi-line description continues under its first line, aligned past the stamp.
        print(stamp + line.replace("\n", "\n" + " " * len(stamp)), file=self.out, flush=True)

    def reconnecting(self, note: Reconnecting) -> None:
        """Print that the stream is being resumed."""
        print(
            f"[ ----- ] {note.reason}; resuming after event {note.after_id} "
            f"in {note.delay_s:.2f} s",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        """Nothing to stop."""


class _GenerationElapsed(ProgressColumn):
    """Time since the generation's first event (so a late attach shows its real age), up
    to its last event once it has ended."""

    def render(self, task: Task) -> Text:
        first: datetime | None = task.fields.get("first_at")
        end: datetime | None = task.fields.get("end_at")
        seconds = (
            int(max(0.0, ((end or datetime.now(UTC)) - first).total_seconds())) if first else 0
        )
        minutes, seconds = divmod(seconds, 60)
        return Text(f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}", style="progress.elapsed")


class BarRenderer:
    """A live bar (phase, percent, files, elapsed time), and above it a line for each
    phase completed, retry and the end."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.files: set[str] = set()
        self.phase = "pending"
        self.first_at: datetime | None = None
        self.end_at: datetime | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.fields[phase]:<9}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[files]:>4} files"),
            _GenerationElapsed(),
            TextColumn("{task.fields[note]}"),
            console=self.console,
        )
        self.task: TaskID = self.progress.add_task(
            "", total=100, phase=self.phase, files=0, note="", first_at=None, end_at=None
        )
        self.progress.start()

    def event(self, event: StreamEvent) -> None:
        """Move the bar; print what a person should not miss."""
        note = ""
        phase: str | None = None
        match event.event:
            case FileWritten(path=path, phase=phase):
                self.files.add(path)
            case FileDeleted(path=path, phase=phase):
                self.files.discard(path)
            case PhaseStarted(phase=phase) | PhaseCompleted(phase=phase):
                pass
            case PhaseProgress(phase=phase, tokens_received=tokens):
                note = f"{tokens} tokens received" if tokens else ""
            case LlmRetrying(phase=phase, delay_s=delay):
                note = f"retrying in {delay:.0f} s"
        self.phase = event.type.split(".")[-1] if event.is_terminal else phase or self.phase
        if event.event is not None:
            self.first_at = self.first_at or event.event.at
            self.end_at = event.event.at if event.is_terminal else None
        self.progress.update(
            self.task,
            completed=event.event.progress if event.event is not None else None,
            files=len(self.files),
            note=note,
            phase=self.phase,
            first_at=self.first_at,
            end_at=self.end_at,
        )
        line = describe(event)
        shown = (
            "phase.completed",
            "llm.retrying",
            "verify.completed",
            "verify.unavailable",
            "repair.started",
            "repair.completed",
            "repair.reverted",
        )
        if line and (event.is_terminal or event.type in shown):
            self.progress.refresh()  # the bar above the line shows the state it reports
            self.progress.console.print(line.strip())

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
