"""The results table, printed and written to `bench/RESULTS.md` with the machine's
description.

A run writes the top of the file (machine, table, notes) and keeps everything after
`KEPT_FROM`: the analysis, profiles and dated measurements that people write by hand.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

KEPT_FROM = "<!-- Written by hand from here on: every run of `python -m bench` keeps it. -->"
GENERATED_HEADINGS = (
    "# Kiln benchmark results",
    "## Machine",
    "## Results",
    "## Notes from the run",
)


@dataclass
class Row:
    """One measured quantity of a scenario: Kiln beside its baseline."""

    scenario: str
    kiln: str
    baseline: str
    ratio: str
    goal: str
    met: bool | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Measurements:
    """Per-run values of Kiln and its baseline (run i of both measured together)."""

    kiln: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    def add(self, kiln: float, baseline: float) -> None:
        self.kiln.append(kiln)
        self.baseline.append(baseline)

    @property
    def kiln_median(self) -> float:
        return statistics.median(self.kiln)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        """The median of the per-run ratios Kiln / baseline."""
        ratios = [k / b for k, b in self.runs() if b]
        return statistics.median(ratios) if ratios else float("nan")

    def runs(self) -> list[tuple[float, float]]:
        return list(zip(self.kiln, self.baseline, strict=True))

    def spread(self, fmt: str = "{:,.0f}") -> str:
        return ", ".join(f"{fmt.format(k)} / {fmt.format(b)}" for k, b in self.runs())


def times(ratio: float) -> str:
    """A ratio as the table shows it ("—" when the baseline measured zero)."""
    return f"{ratio:.2f}x" if math.isfinite(ratio) else "—"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def client_note(cpu_fraction: float, what: str = "load generator") -> str | None:
    """A note when a client process ran at (nearly) a full core: it may be the bottleneck."""
    if cpu_fraction >= 0.85:
        return f"{what} at {cpu_fraction:.0%} of a core: the client may be the bottleneck"
    return None


def machine() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nats_server = subprocess.run(
            [str(Path(sys.executable).parent / "nats-server"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        nats_server = "unknown"

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return [
        f"- CPU: {os.cpu_count()} cores, {cpu}; memory {memory}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}; {nats_server}; nats-py {version('nats-py')}, "
        f"litestar {version('litestar')}, uvicorn {version('uvicorn')}, "
        f"SQLAlchemy {version('sqlalchemy')}, msgspec {version('msgspec')}, "
        f"uvloop {version('uvloop')} (every Kiln service, the minimal server and the "
        "load generators run on it)",
        f"- Load average when the report was written: {load}",
    ]


def table(rows: list[Row]) -> str:
    header = ["scenario", "Kiln", "baseline", "ratio", "goal", "met?"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "—"}[row.met]
        lines.append(
            f"| {row.scenario} | {row.kiln} | {row.baseline} | {row.ratio} | {row.goal} | {met} |"
        )
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    out = []
    for row in rows:
        for note in row.notes:
            out.append(f"- {row.scenario}: {note}")
    return "\n".join(out)


def kept_part(path: Path) -> str:
    """What a run keeps of the file at `path`: everything after `KEPT_FROM`, or, in a file
    written before the marker, everything from its first heading a run does not write."""
    if not path.exists():
        return ""
    text = path.read_text()
    if KEPT_FROM in text:
        return text.split(KEPT_FROM, 1)[1].strip("\n")
    for heading in re.finditer(r"(?m)^#+ .*$", text):
        if heading.group(0).strip() not in GENERATED_HEADINGS:
            return text[heading.start() :].strip("\n")
    return ""


def write(path: Path, rows: list[Row], *, command: str, runs: int, elapsed_s: float) -> None:
    """Write the results of this run to the top of `path`, keeping its hand-written part."""
    kept = kept_part(path)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Kiln benchmark results",
        "",
        f"Written by `{command}` on {now}; {runs} runs per scenario (medians; the ratio is "
        f"the median of the per-run ratios); the whole run took {elapsed_s / 60:.1f} min.",
        "",
        "## Machine",
        "",
        *machine(),
        "- **The machine is shared and noisy**: other jobs (test suites of other work) ran "
        "on the same 2 cores during the run, and every process of a scenario (nats-server, "
        "the Kiln service, the load generators) competes for those 2 cores. Treat a single "
        "number as ±20 %; the ratios, measured side by side in the same run, are steadier.",
        "",
        "## Results",
        "",
        table(rows),
        "",
        "## Notes from the run",
        "",
        notes(rows) or "- none",
        "",
        KEPT_FROM,
        "",
    ]
    if kept:
        parts += [kept, ""]
    path.write_text("\n".join(parts))
