"""The scenarios B1-B6 of issue 10. Each module has `TITLE` and `async def run(ctx)`,
which returns the rows it measured."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Context:
    """What every scenario is given: where to keep its files, how many runs, which sizes."""

    root: Path
    runs: int = 3
    toy: bool = False
    profile: bool = False
    started: float = field(default_factory=time.monotonic)

    def size(self, full: int, toy: int) -> int:
        return toy if self.toy else full

    def seconds(self, full: float, toy: float) -> float:
        return toy if self.toy else full

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)
