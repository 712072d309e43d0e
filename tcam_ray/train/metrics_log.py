"""metrics.jsonl: one JSON line per epoch and split. An epoch's lines are on the disk before its
checkpoint is written; resume cuts the lines of epochs after the checkpoint it resumes from (they are
trained again), so every epoch is there exactly once."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import atomic_write_text, uninterrupted, writing


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        """The lines written whole (a last line cut off by a crash, or still being written, is left out)."""
        if not self.path.exists():
            return []
        text = self.path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines = lines[:-1]
        return [json.loads(line) for line in lines if line.strip()]

    def append(self, *records: dict) -> None:
        """Append lines in one write, flushed to the disk before returning."""
        with uninterrupted(), writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write("".join(json.dumps(record) + "\n" for record in records))
                handle.flush()
                os.fsync(handle.fileno())

    def keep_until(self, epoch: int) -> None:
        """Drop lines of epochs after `epoch` (written before an interruption) and any cut-off line."""
        kept = [r for r in self.records() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept), durable=True)
