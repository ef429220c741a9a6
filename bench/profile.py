"""A short text summary of a py-spy raw (collapsed stacks) profile: where the time goes."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarize(path: Path, top: int = 30) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[_short(frame)] += count
        own[_short(frames[-1])] += count
    lines = [f"{total} samples of {path.name}", "", "inclusive (a frame and what it calls):"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "own time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" → "function (module.py)", so lines merge.
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
    return f"{name} ({module})" if module else name


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30))
