"""``mvfa-lite sweep GRID --status``: where every cell of a sweep stands, asked at any time.

A cell is *finished* (its result.json, run with the grid's parameters and inputs), *pending*
or *running* (the SLURM job recorded in its folder is in ``squeue``), *failed* (its
error.txt: the notebook's error, or how SLURM ended the job), or *to do*. Nothing is
written or submitted; the sweep's lock is not needed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .cluster import SlurmQueue, recorded_job
from .sweep import load_grid, plan

STATES = ("finished", "pending", "running", "failed", "to do")


def sweep_status(grid_path: str | Path) -> dict[str, str]:
    """{cell name: state, with the reason after a colon for failed cells}, printed one line
    a cell and a summary line."""
    grid = load_grid(grid_path)
    cells = grid.cells()
    _, report = plan(grid, cells, force=True)       # changed cells count as to do
    live = SlurmQueue().live() if shutil.which("squeue") else {}
    states = {}
    for cell in cells:
        job = recorded_job(cell.folder) or {}
        error = cell.folder / "error.txt"
        if cell.name in report.skipped:
            states[cell.name] = "finished"
        elif job.get("job_id") in live:
            running = live[job["job_id"]] != "PENDING"
            states[cell.name] = f"{'running' if running else 'pending'} (job {job['job_id']})"
        elif error.exists():
            states[cell.name] = f"failed: {error.read_text().strip()}"
        else:
            states[cell.name] = "to do"
    for name, state in states.items():
        print(f"  {name}: {state}")
    counts = {kind: sum(s.startswith(kind) for s in states.values()) for kind in STATES}
    print(f"sweep {grid.output}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return states
