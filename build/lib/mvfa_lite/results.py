"""Result files: written atomically (a crash never leaves half a file), read back as tables.

Every notebook ends with :func:`save_result` into its output folder; sweeps skip runs whose
``result.json`` exists, and the results page reads them all with :func:`collect_results`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

RESULT_FILE = "result.json"


def write_json(path: str | Path, payload) -> Path:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=_plain))
    temporary.replace(path)
    return path


def save_result(out_dir: str | Path, payload: dict) -> Path:
    """A notebook's final act: ``out_dir/result.json`` (metrics, parameters, weights used)."""
    return write_json(Path(out_dir) / RESULT_FILE, payload)


def collect_results(root: str | Path) -> list[dict]:
    """Every result.json below ``root``, flattened one level (``metrics.image_auroc`` ...),
    with ``run`` = its folder relative to root. Short lists become tuples (see _cell).
    Unreadable files are reported, not fatal."""
    rows = []
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"skipping unreadable {path}: {error}")
            continue
        row: dict = {"run": path.parent.relative_to(root).as_posix()}
        for key, value in payload.items():
            if isinstance(value, dict):
                row.update({f"{key}.{k}": _cell(v) for k, v in value.items()
                            if not isinstance(v, dict)})
            else:
                row[key] = _cell(value)
        rows.append({k: v for k, v in row.items() if v is not _SKIP})
    return rows


_SKIP = object()


def _cell(value):
    """A table cell: lists of plain values become tuples (hashable, so groupable, e.g.
    levels = (6, 12)); long histories and nested structures are left out."""
    if isinstance(value, list):
        plain = all(isinstance(v, (int, float, str, bool)) or v is None for v in value)
        return tuple(value) if plain and len(value) <= 16 else _SKIP
    return value


def _plain(value):
    """JSON fallback for numpy/torch scalars and paths."""
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return str(value)
