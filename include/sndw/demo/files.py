"""The CSV sample source: quality inspections with quoted commas, embedded newlines and gaps."""

from __future__ import annotations

import csv
import random
from datetime import datetime, timedelta
from pathlib import Path


def write_inspections(path: str | Path, rows: int = 500, seed: int = 3) -> int:
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = datetime(2024, 1, 1, 6, 0)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Inspection ID", "Batch Code", "Inspector", "Checked At", "Score", "Passed", "Remarks"])
        for i in range(1, rows + 1):
            remark = rng.choice(["", "ok", "scratch, minor", "line 2\nre-inspect", "ção & ünïcode"])
            writer.writerow([i, f"RE-{i % 40:03d}", rng.choice(["Ana", "Bruno", "O'Neil"]),
                             (start + timedelta(minutes=13 * i)).strftime("%Y-%m-%d %H:%M:%S"),
                             f"{rng.uniform(60, 100):.1f}" if i % 17 else "", "true" if rng.random() > 0.1 else "false",
                             remark])
    return rows
