"""Output folders that are never half written: a command's result appears whole, or not at all.

An :class:`OutputFolder` is made when a command starts, before any training: it checks that
the folder (or the nearest one above it) can be written and creates nothing, so a refused run
leaves no trace. At the end, :meth:`OutputFolder.writing` hands
out a staging folder beside it (``.<name>.partial-<pid>``) for every file of the result, and
swaps it in only after the last one is written:

1. the files of the old folder that this command does not write (another command's results, the
   user's notes) are carried into the staging folder as hard links, so nothing is copied or
   moved; this command's own files from an earlier run that it does not write now (a
   ``maps.npz`` of an earlier ``--save-maps``) are left behind: they would be stale. A file
   counts as mvfa-lite's only when the folder's marker lists it: names alone prove nothing (a
   user's ``00000_patient_A.png`` looks like a ``predict`` overlay). A file named like one this
   command writes but not listed is the user's: the command is refused at the start (one line
   naming it) rather than replace it. Other files of the user's are kept beside the results, so
   a folder of notes stays usable as ``--out``;
2. a marker file (:data:`OUTPUT_MARKER`) names the command and every mvfa-lite file in
   the folder; image folders never read a folder that holds it;
3. the staging folder and the old folder are exchanged in one atomic step (Linux
   ``renameat2(RENAME_EXCHANGE)``) and the old one is deleted. Where the file system cannot
   exchange, two renames do it; a kill between them leaves the old folder as
   ``.<name>.previous-<pid>``, and the next command on that folder puts it back.

So a kill at any moment leaves either the old complete result or the new complete result,
and an exception while writing removes the staging folder and leaves the old one untouched.

Result files (:func:`write_json`, :func:`save_result`) are written atomically too. Every
notebook ends with :func:`save_result` into its output folder; sweeps skip runs whose
``result.json`` exists, and the results page reads them all
(:func:`mvfa_lite.teaching.results.collect_results`).
"""
from __future__ import annotations

import ctypes
import errno
import fnmatch
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

try:
    import resource             # Unix: the file size limit (ulimit -f)
except ImportError:
    resource = None

#: the file that marks a folder written by mvfa-lite; image folders never read such a folder
OUTPUT_MARKER = ".mvfa-lite-output"

#: What ``train`` writes; ``evaluate`` writes the same without adapters.pth.
TRAIN_FILES = ("adapters.pth", "metrics.json", "scores.csv", "maps.npz")
EVALUATE_FILES = ("metrics.json", "scores.csv", "maps.npz")
#: The one wording of the notice on ``predict`` and the book's method pages (checked by a test)
RESEARCH_ONLY = ("Research use only, not for clinical use: mvfa-lite is not a medical "
                 "device, and its scores and maps are not diagnoses.")
#: What ``predict`` writes: scores.csv and one numbered overlay per image.
PREDICT_FILES = ("scores.csv", "[0-9][0-9][0-9][0-9][0-9]_*.png")
#: a full disk, an exhausted quota, a file over the size limit (``ulimit -f``)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutputFolder:
    """The output folder of one command.

    ``path`` is the folder (``--out``), created (with parents) by :meth:`writing`; ``command`` the
    command's name, recorded in the marker file; ``owns`` the names (or ``fnmatch`` patterns)
    of the files this command writes: those of an earlier run that it does not write again
    are removed, every other file is kept. ``inputs`` are the folders the command reads; the
    output folder may lie inside them but must neither be one of them nor contain one.
    Raises OutputError when ``path`` is a file, cannot be created or written, is a mount
    point, or is or contains an input folder, the current folder or the home folder.
    """

    def __init__(self, path: str | os.PathLike, command: str, owns: Iterable[str],
                 inputs: Iterable[str | os.PathLike] = ()) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_symlink():          # swap the folder it points to, not the link
            self.path = self.path.resolve()
        self.command = command
        self.owns = tuple(owns)
        self._refuse_overlaps(inputs)
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"--out {self.path} is a file, not a folder. Give a folder name "
                              "(it is created if missing), or move the file away.")
        self._recover()
        self._refuse_foreign()
        if not self.path.exists():      # created when the results are written, not before
            return _probe_writable(_nearest_folder(self.path), "where the output folder goes")
        _probe_writable(self.path, "the output folder")
        _probe_writable(self.path.parent, "the folder holding it, where its new version is "
                        "prepared before it is swapped in")
        if self.path.stat().st_dev != self.path.parent.stat().st_dev:
            raise OutputError(f"--out {self.path} is the top of another file system (a mount "
                              "point), so it cannot be swapped for its new version. Give a "
                              f"folder inside it, e.g. {self.path / 'run1'}.")

    def _refuse_overlaps(self, inputs: Iterable[str | os.PathLike]) -> None:
        out = Path(os.path.realpath(self.path))
        inputs = list(inputs)
        for folder in inputs:
            _refuse_image_folders(self.path, out, Path(os.path.realpath(folder)), folder)
        guarded = [(Path(p), "the input") for p in inputs]
        guarded += [(Path.cwd(), "the current folder"), (Path.home(), "the home folder")]
        for folder, role in guarded:
            folder_real = Path(os.path.realpath(folder))
            if out == folder_real or out in folder_real.parents:
                raise OutputError(
                    f"--out {self.path} {'is' if out == folder_real else 'contains'} {role} "
                    f"{folder}; the output folder is replaced whole when the results are "
                    "written. Give a folder of its own, e.g. runs/NAME.")

    def _owned(self, name: str) -> bool:
        return name == OUTPUT_MARKER or any(fnmatch.fnmatch(name, p) for p in self.owns)

    def manifest(self) -> set[str]:
        """The files that the folder's marker says mvfa-lite wrote (none without a marker)."""
        try:
            files = json.loads((self.path / OUTPUT_MARKER).read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            return set()
        return {f for f in files if isinstance(f, str)}

    def _foreign(self, names: Iterable[str]) -> list[str]:
        """The names, among ``names``, of files named like this command's outputs that the
        marker does not list: the user's, never to be replaced or deleted."""
        mine = self.manifest()
        return sorted(n for n in names if n != OUTPUT_MARKER and self._owned(n)
                      and n not in mine)

    def _refuse_foreign(self) -> None:
        if not self.path.is_dir():
            return
        foreign = self._foreign(p.name for p in self.path.iterdir())
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise OutputError(
                f"--out {self.path} holds {foreign[0]}{more}, named like what `{self.command}` "
                f"writes but not written by mvfa-lite (not listed in its {OUTPUT_MARKER}); it "
                "would be replaced. Give a new or empty folder, e.g. runs/NAME, or move the "
                "file away.")

    def _recover(self) -> None:
        """Clean up after commands on this folder that were killed: put back an old folder
        left aside between two renames, delete abandoned staging folders."""
        prefix = f".{self.path.name}."
        leftovers = sorted((p for p in self.path.parent.glob(f"{glob.escape(prefix)}*-*")
                            if _pid_of(p, prefix) is not None), key=lambda p: p.stat().st_mtime)
        for leftover in reversed(leftovers):                # newest first
            if process_alive(_pid_of(leftover, prefix)):
                continue
            if leftover.name.startswith(f"{prefix}previous-") and not self.path.exists():
                os.rename(leftover, self.path)              # the old complete result, back
            else:
                shutil.rmtree(leftover, ignore_errors=True)

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield an empty staging folder; on a normal exit, swap it in as the new result."""
        staging = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            yield staging
            written = sorted(p.name for p in staging.iterdir())
            carried = self._carry_over(staging, set(written))
            (staging / OUTPUT_MARKER).write_text(json.dumps(
                {"command": self.command, "files": sorted({*written, *carried}),
                 "written": written, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                indent=2))
            self._swap_in(staging)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            reason = write_failure(error, self.path)
            if reason is None:
                raise
            raise OutputError(f"cannot write the results into {self.path}: {reason}; the "
                              "earlier result there is kept. Free space (or raise the limit) "
                              "and run again, or give an --out on another disk.") from None

    def _carry_over(self, staging: Path, written: set[str]) -> list[str]:
        """Hard-link every entry of the old folder into the staging folder (files that cannot
        be linked are copied), except this command's own files listed in the marker; return
        the carried names that the marker lists (another command's results)."""
        if not self.path.is_dir():
            return []
        mine, carried = self.manifest(), []
        entries = list(self.path.iterdir())
        foreign = self._foreign(e.name for e in entries if e.name in written)
        if foreign:     # appeared while the command ran
            raise OutputError(f"--out {self.path}: {foreign[0]} appeared there while "
                              f"`{self.command}` ran and would be replaced; the results were "
                              "not written. Move it away and run again.")
        for entry in entries:
            if entry.name in written or entry.name == OUTPUT_MARKER or (
                    entry.name in mine and self._owned(entry.name)):
                continue
            if entry.name in mine:
                carried.append(entry.name)
            target = staging / entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(entry), target)
            elif entry.is_dir():
                shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, target)
        return carried

    def _swap_in(self, staging: Path) -> None:
        if not self.path.exists():
            os.rename(staging, self.path)
        elif _exchange(staging, self.path):
            shutil.rmtree(staging, ignore_errors=True)     # now the old folder
        else:
            previous = self.path.parent / f".{self.path.name}.previous-{os.getpid()}"
            os.rename(self.path, previous)
            os.rename(staging, self.path)
            shutil.rmtree(previous, ignore_errors=True)


def _refuse_image_folders(given: Path, out: Path, root: Path, shown) -> None:
    """An --out inside a dataset's split folder (``root/test/...``, beside good/ and Ungood/)
    would put results among its images and, when swapped in, replace an image folder."""
    if root not in out.parents:
        return
    split = root / out.relative_to(root).parts[0]
    if (split / "good").is_dir() or (split / "Ungood").is_dir():
        raise OutputError(f"--out {given} lies inside the images of the dataset {shown} "
                          f"({split.name}/); give a folder outside its splits, e.g. "
                          f"{root / 'runs' / 'NAME'} or runs/NAME.")


def _probe_writable(folder: Path, role: str) -> None:
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".mvfa-lite-probe-")
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise OutputError(f"cannot write to {folder} ({role}): {error.strerror or error}. "
                          "Give an --out in a folder you can write to.") from None


def _nearest_folder(path: Path) -> Path:
    """The nearest existing folder above ``path`` (refused when that is a file)."""
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise OutputError(f"cannot create the output folder {path}: {above} is a file, not a "
                          "folder. Give a folder you can write to.")
    return above


_TORCH_WRITER = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def write_failure(error: BaseException, folder: Path) -> str | None:
    """Why writing into ``folder`` failed, when refused for space (disk, quota, ``ulimit -f``;
    torch's zip writer gives no errno, only _TORCH_WRITER's words), with the free space, limit."""
    if isinstance(error, OutputError) and isinstance(error.__cause__, (OSError, RuntimeError)):
        error = error.__cause__                     # atomic_write's, inside the staging folder
    if isinstance(error, OSError) and error.errno in _FULL:
        reason = os.strerror(error.errno)
    elif isinstance(error, RuntimeError) and any(t in str(error) for t in _TORCH_WRITER):
        reason = "torch could not write a file whole, as when a disk, quota or size limit is full"
    else:
        return None
    reason += f" ({shutil.disk_usage(_nearest_folder(folder)).free / 2**20:.0f} MiB free there"
    limit = resource and resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit and limit != resource.RLIM_INFINITY:
        reason += f", files limited to {limit // 1024} KiB by ulimit -f {limit // 1024}"
    return reason + ")"


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:                 # file systems without hard links
        shutil.copy2(source, target)


def _pid_of(path: Path, prefix: str) -> int | None:
    kind, _, pid = path.name[len(prefix):].rpartition("-")
    return int(pid) if kind in ("partial", "previous") and pid.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (this process counts as alive)."""
    if pid == os.getpid() or os.name == "nt":   # os.kill(pid, 0) would end it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                     # alive, another user's
        pass
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:            # glibc older than 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False                 # this file system cannot exchange
    raise OSError(code, os.strerror(code), f"{a} <-> {b}")

RESULT_FILE = "result.json"


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` (with this process's id, so two processes never
    share one) to write the file under; on a normal exit it replaces ``path`` in one rename,
    on an exception it is removed. A crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        reason = write_failure(error, path.parent)
        if reason is None:
            raise
        kept = (f"the earlier {path.name} is kept" if path.exists()
                else f"{path.parent} is left as it was")
        raise OutputError(f"cannot write {path.name} into {path.parent}: {reason}; {kept}. "
                          "Free space (or raise the quota/file size limit) and run "
                          "again.") from error
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, payload) -> Path:
    """Write JSON to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, default=_plain))
    return Path(path)


def save_result(out_dir: str | Path, payload: dict) -> Path:
    """A notebook's final act: ``out_dir/result.json`` (metrics, parameters, weights used)."""
    return write_json(Path(out_dir) / RESULT_FILE, payload)


def _plain(value):
    """JSON fallback for numpy/torch scalars and paths."""
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return str(value)
