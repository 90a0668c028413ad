"""What a sweep reads and who writes its output folder (:mod:`mvfa_lite.tools.sweep`).

Inputs resolve one way: a parameter is a path only when it looks like one (it has a ``/``
or starts with ``~``; shipped set names, bare words such as ``paper`` or ``valid``,
templates and hub names never are), and a relative path is taken from the folder where the
sweep was started (the shipped grids: the repository root), whatever folders exist
elsewhere. Each cell records the absolute path and a fingerprint of every file or folder it
reads in ``cell.json``; a finished cell is trusted only while both are unchanged.

One sweep writes an output folder at a time: ``.sweep.lock`` there holds its pid and host.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from ..data import catalogue
from ..errors import MVFAError
from ..outputs import process_alive

LOCK_FILE = ".sweep.lock"       # the one sweep writing an output folder: pid and host


def is_path(value) -> bool:
    """Text that names a file or folder: it has a ``/`` (or starts with ``~``) and is neither
    a shipped or extra set's name, a template (``{dataset}``) nor a URL or hub name. Bare
    words (``paper``, ``valid``) are never paths, whatever folders exist."""
    return (isinstance(value, str) and value not in (*catalogue.SHIPPED, *catalogue.EXTRA)
            and ("/" in value or value.startswith("~")) and "{" not in value and ":" not in value)


def absolute(parameters: dict) -> dict:
    """The notebook runs in its own folder: parameters naming an existing file or folder
    (relative to where the sweep was started, see :func:`is_path`) are passed as absolute
    paths; other text is passed as written."""
    return {key: str(Path(value).expanduser().resolve())
            if is_path(value) and Path(value).expanduser().exists() else value
            for key, value in parameters.items()}


def inputs(inject: dict, cache: dict) -> dict:
    """path and fingerprint of every existing file or folder a cell reads (recorded in
    cell.json and compared before a finished cell is trusted)."""
    found = {}
    for key, value in inject.items():
        if key != "out_dir" and isinstance(value, str) and os.path.isabs(value) \
                and os.path.exists(value):
            if value not in cache:
                cache[value] = fingerprint(Path(value))
            found[key] = {"path": value, "fingerprint": cache[value]}
    return found


def fingerprint(path: Path) -> str:
    """A hash of the names, sizes and modification times of every file below ``path``
    (links not followed): cheap, and changes when a file is added, removed or rewritten."""
    digest = hashlib.sha256()
    if path.is_file():
        stat = path.stat()
        digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]
    for folder, folders, files in os.walk(path):
        folders.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            try:
                stat = os.lstat(full)
            except OSError:
                continue
            relative = os.path.relpath(full, path).encode("utf-8", "surrogateescape")
            digest.update(relative + f" {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@contextmanager
def writer_lock(output: Path, where: str):
    """One sweep writes an output folder at a time: ``output/.sweep.lock`` holds its pid and
    host; a lock left by a dead process on this host is taken over."""
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    lock, host = output / LOCK_FILE, socket.gethostname()
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
                pid, owner_host = int(owner["pid"]), str(owner["host"])
            except (OSError, ValueError, KeyError, TypeError):
                owner, pid, owner_host = {}, None, "?"
            if pid is not None and owner_host == host and not process_alive(pid):
                lock.unlink(missing_ok=True)        # its sweep was killed: take over
                continue
            raise MVFAError(f"{where}: another sweep (pid {pid} on {owner_host}, since "
                            f"{owner.get('started', '?')}) is writing {output}; wait for it to "
                            f"end, or delete {lock} if that sweep no longer runs.") from None
        with os.fdopen(handle, "w") as stream:
            json.dump({"pid": os.getpid(), "host": host,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, stream)
        break
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(output.iterdir()):      # refused before any cell ran
            output.rmdir()


def changed_inputs(record: Path, now_inputs: dict) -> str:
    """'' when the files and folders the cell reads are the ones it was run on."""
    try:
        recorded = json.loads(record.read_text()).get("inputs", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}
    changed = []
    for key, now in now_inputs.items():
        then = recorded.get(key) if isinstance(recorded, dict) else None
        if not isinstance(then, dict) or then.get("path") != now["path"]:
            changed.append(f"{key}: {(then or {}).get('path', 'not recorded')} -> {now['path']}")
        elif then.get("fingerprint") != now["fingerprint"]:
            changed.append(f"{key}: the contents of {now['path']} changed")
    return ", ".join(changed)
