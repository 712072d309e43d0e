"""metrics.jsonl: one JSON line per epoch and split, cut back on resume."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def keep_until(self, epoch: int) -> None:
        """Drop lines of epochs after `epoch` (written before an interruption)."""
        kept = [r for r in self.records() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
