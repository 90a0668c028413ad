"""The results page's table: every ``result.json`` of a folder of runs, one row each."""
from __future__ import annotations

import json
from pathlib import Path

from ..outputs import RESULT_FILE


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
