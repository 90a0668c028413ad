"""Where the cells of a sweep run: here one after another, as SLURM jobs, or as Ray tasks.

An executor maps one function over a list of cells and yields each cell's
:class:`CellResult` as it arrives. It knows nothing of notebooks: the function
(:func:`mvfa_lite.tools.sweep.run_cell`) runs one cell and writes its results into the cell's own
folder, so the results store stays the only record of what is finished. SLURM jobs go
through submitit and Ray tasks through Ray, each installed as an extra
(``pip install 'mvfa-lite[slurm]'`` / ``'mvfa-lite[ray]'``). A job or task that dies
(killed for time or memory, a lost node) becomes a failed cell with the engine's log; the
other cells go on. On SLURM a cell that reaches its time limit or is pre-empted is requeued
and continues after its last finished epoch (:class:`Requeueable`).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

from ..errors import MVFAError
from ..outputs import RESULT_FILE
from .cluster import (
    ENDED,
    LIVE,
    Progress,
    SlurmQueue,
    check_ray,
    check_slurm,
    ray_logs,
    record_job,
    recorded_job,
)


@dataclass
class CellResult:
    name: str
    failed: bool = False
    reason: str = ""            # "ErrorType: message" when failed
    log: str = ""               # the file to read when failed


@dataclass
class Resources:
    """What every cell asks of a cluster (from the grid file's ``resources:``, or flags)."""
    gpus: int | None = None         # None: Ray gives one GPU per cell where GPUs exist
    cpus: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None  # SLURM only
    partition: str | None = None    # SLURM only
    slurm: dict = field(default_factory=dict)   # more sbatch options, in submitit's names

    KINDS = {"gpus": int, "cpus": int, "mem_gb": (int, float), "timeout_min": int,
             "partition": str, "slurm": dict}

    @classmethod
    def from_mapping(cls, mapping: dict, where: str) -> Resources:
        """Checked ``resources:`` of a grid file; ``where`` names the file in messages."""
        unknown = sorted(set(mapping) - set(cls.KINDS))
        if unknown:
            raise MVFAError(f"{where}: unknown resources {unknown}; use {sorted(cls.KINDS)}.")
        for key, value in mapping.items():
            kind = cls.KINDS[key]
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                wanted = {dict: "a mapping", str: "text"}.get(kind, "a number")
                raise MVFAError(f"{where}: resources.{key} must be {wanted}, not {value!r}.")
        return cls(**{key: value for key, value in mapping.items() if value is not None})

    def updated(self, **changes) -> Resources:
        """A copy with the options given on the command line (None = not given)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Resources(**{**values, **{k: v for k, v in changes.items() if v is not None}})


class LocalExecutor:
    """One cell after another in this process (papermill starts each notebook's kernel)."""
    name = "local"

    def __init__(self, progress: bool = True):
        self.progress = progress

    def run(self, function: Callable, cells: list, output: Path) -> Iterator[CellResult]:
        for i, cell in enumerate(cells, 1):
            print(f"[{i}/{len(cells)}] {cell.name}", flush=True)
            yield function(cell, progress=self.progress)


#: how often a cell may be requeued at its time limit (submitit's default: 3); each time it
#: continues after its last epoch, so a long training goes on over many time limits
MAX_REQUEUES = 20


class SlurmExecutor:
    """One SLURM job array through submitit, one task per cell; submitit's logs (and the
    pickled jobs) go to ``<output>/.slurm/``. ``cluster="local"`` runs the same submitit
    jobs as processes on this machine, to try a grid before sending it to the cluster."""
    name = "slurm"

    def __init__(self, resources: Resources | None = None, cluster: str = "slurm",
                 poll_seconds: float | None = None):
        self.resources = resources or Resources()
        self.cluster = cluster
        self.poll_seconds = poll_seconds or (1 if cluster == "local" else 15)

    def run(self, function: Callable, cells: list, output: Path) -> Iterator[CellResult]:
        _require("submitit", "slurm")
        queue = SlurmQueue() if self.cluster == "slurm" else None
        if queue is None:       # submitit's local cluster: its processes, followed by submitit
            yield from self._follow_local(self._submit(function, cells, output), cells)
            return
        print(check_slurm(self.resources), flush=True)
        live, owners = queue.live(), {cell.name: recorded_job(cell.folder) for cell in cells}
        adopted = [cell for cell in cells if (owners[cell.name] or {}).get("job_id") in live]
        fresh = [cell for cell in cells if cell not in adopted]
        tracked = {owners[c.name]["job_id"]: (c, owners[c.name].get("log", "")) for c in adopted}
        if adopted:
            print(f"adopted {len(adopted)} cells whose jobs are still pending or running: "
                  + ", ".join(f"{c.name} (job {j})" for j, (c, _) in tracked.items()), flush=True)
        for job, cell in zip(self._submit(function, fresh, output) if fresh else [], fresh):
            record_job(cell.folder, job.job_id, str(job.paths.stderr))
            tracked[job.job_id] = (cell, str(job.paths.stderr))
        yield from self._follow(queue, tracked)

    def _submit(self, function: Callable, cells: list, output: Path) -> list:
        logs = output / ".slurm"
        executor = self.submitit_executor(logs)
        try:
            with contextlib.redirect_stderr(io.StringIO()):    # submitit prints sbatch's words
                jobs = executor.map_array(Requeueable(function), cells)
        except Exception as error:          # sbatch refused: its own words, on one line
            raise MVFAError(f"--executor slurm: the jobs were not submitted: "
                            f"{_last_error(error)} (submitit's files in {logs})") from None
        print(f"submitted {len(jobs)} cells as {self.cluster} jobs {jobs[0].job_id}"
              + (f" to {jobs[-1].job_id}" if len(jobs) > 1 else "")
              + f"; submitit logs in {logs}", flush=True)
        return jobs

    def _follow(self, queue: SlurmQueue, tracked: dict) -> Iterator[CellResult]:
        """Wait for the jobs {id: (cell, log)}: squeue for those not ended, then how each
        ended (accounting may lag behind squeue a few polls; never waits forever)."""
        progress, results, lagging = Progress(len(tracked)), [], {}
        while tracked:
            live = queue.live()
            for job_id in [j for j in tracked if j not in live]:
                state = queue.ended(job_id)
                if state in LIVE and lagging.get(job_id, 0) < 4:
                    lagging[job_id] = lagging.get(job_id, 0) + 1
                    continue
                cell, log = tracked.pop(job_id)
                results.append(outcome(cell, None if state in LIVE else state, log))
                yield results[-1]
            progress.show({j: live[j] for j in tracked if j in live}, results)
            if tracked:
                time.sleep(self.poll_seconds)

    def _follow_local(self, jobs: list, cells: list) -> Iterator[CellResult]:
        submitit = _require("submitit", "slurm")
        cell_of = {job.job_id: cell for job, cell in zip(jobs, cells)}
        for job in submitit.helpers.as_completed(jobs, poll_frequency=self.poll_seconds):
            try:
                yield job.result()
            except Exception as error:      # the job itself died: time, memory, node
                yield CellResult(cell_of[job.job_id].name, failed=True,
                                 reason=_last_error(error), log=str(job.paths.stderr))

    def submitit_executor(self, logs: Path):
        """submitit's executor with this sweep's resources; logs and jobs go to ``logs``."""
        submitit = _require("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=logs / "%j", cluster=self.cluster,
                                         slurm_max_num_timeout=MAX_REQUEUES)
        try:
            executor.update_parameters(**self._parameters(logs))
        except NameError as error:          # submitit's message lists the valid names
            raise MVFAError(f"resources.slurm: {str(error).splitlines()[0]}") from None
        return executor

    def _parameters(self, logs: Path) -> dict:
        r = self.resources
        timeout = r.timeout_min or (None if self.cluster == "slurm" else 24 * 60)
        parameters = dict(name=f"mvfa-{logs.parent.name}", nodes=1, tasks_per_node=1,
                          gpus_per_node=r.gpus or 0, cpus_per_task=r.cpus,
                          mem_gb=r.mem_gb, timeout_min=timeout, slurm_partition=r.partition)
        if timeout:     # the requeue signal: 90 s before the limit, at half of short ones
            parameters["slurm_signal_delay_s"] = min(90, timeout * 30)   # (SLURM: +-60 s)
        parameters.update({f"slurm_{key}": value for key, value in r.slurm.items()})
        return parameters


class Requeueable:
    """A cell's function in submitit's checkpoint protocol: when SLURM signals the time limit
    or a pre-emption (``--signal``), submitit calls :meth:`checkpoint` and requeues the same
    call; the cell's training, which keeps its state at every epoch boundary
    (:mod:`mvfa_lite.protocols.training_state`), then continues after its last epoch."""

    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def checkpoint(self, *args, **kwargs):
        submitit = _require("submitit", "slurm")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class RayExecutor:
    """One Ray task per cell. ``address``: ``auto`` (the cluster this machine belongs to),
    ``ray://head:10001`` (Ray Client), or None: $RAY_ADDRESS if set, else a Ray runtime
    started here for the sweep and stopped after it. Every node needs mvfa-lite installed
    and the sweep's output folder on a shared file system."""
    name = "ray"

    def __init__(self, resources: Resources | None = None, address: str | None = None,
                 init_options: dict | None = None):
        self.resources = resources or Resources()
        self.address = address
        self.init_options = init_options or {}

    def run(self, function: Callable, cells: list, output: Path) -> Iterator[CellResult]:
        imported = "ray" in sys.modules
        address = check_ray(self.address)       # may choose RAY_AUTH_MODE: before Ray reads it
        ray = _require("ray", "ray")
        started = not ray.is_initialized()
        if started:
            if imported and os.environ.get("RAY_AUTH_MODE") == "token":
                from ray._raylet import Config     # Ray read its settings on import: again
                Config.initialize("")
            try:
                ray.init(address=address, **self.init_options)
            except Exception as error:      # no cluster at "auto", refused token, ...
                said = ("ConnectionError: no Ray cluster runs on this machine; start one (ray "
                        "start) or leave --ray-address out to run Ray here"
                        if address == "auto" and isinstance(error, ConnectionError)
                        else _last_error(error))    # (Ray's own advice names its own flag)
                raise MVFAError(f"--executor ray: cannot start or reach Ray at {address}: "
                                f"{said} (Ray's logs: {ray_logs()})") from None
        try:
            r = self.resources
            gpus = r.gpus if r.gpus is not None else min(1, ray.cluster_resources().get("GPU", 0))
            task = ray.remote(function).options(
                num_cpus=r.cpus or 1, num_gpus=gpus,
                memory=int(r.mem_gb * 2**30) if r.mem_gb else None)
            pending = {task.remote(cell): cell for cell in cells}
            print(f"submitted {len(cells)} cells as Ray tasks ({gpus} GPU each)", flush=True)
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready)
                try:
                    yield ray.get(ready)
                except Exception as error:  # the worker died, or Ray could not run it
                    yield CellResult(cell.name, failed=True, reason=_last_error(error),
                                     log=str(cell.log))
        finally:
            if started:
                ray.shutdown()


def outcome(cell, state: str | None, log: str) -> CellResult:
    """An ended SLURM job's cell: the scheduler's word when it ended the job (cancelled,
    timed out, pre-empted ...; also written to the cell's error.txt), else done when the cell
    wrote its result, else the notebook's own error (error.txt), else how the job ended."""
    error, failed_notebook = cell.folder / "error.txt", cell.folder / "failed.ipynb"
    if state in ENDED and state != "FAILED":
        reason = f"SLURM: {ENDED[state]} ({state})"
    elif (cell.folder / RESULT_FILE).exists():
        return CellResult(cell.name)
    elif error.exists():
        return CellResult(cell.name, True, error.read_text().strip(),
                          str(failed_notebook if failed_notebook.exists() else cell.log))
    else:
        reason = (f"SLURM: the job ended ({state}) without writing {RESULT_FILE}" if state else
                  f"SLURM: the job ended without writing {RESULT_FILE}, and SLURM keeps no "
                  "record of how (no accounting)")
    error.write_text(reason + "\n")
    return CellResult(cell.name, True, reason, log)


EXECUTORS = {"local": LocalExecutor, "slurm": SlurmExecutor, "ray": RayExecutor}


def make_executor(name: str, resources: Resources, progress: bool = True, **options):
    """The executor called ``name``; options: ``cluster`` (slurm), ``address`` and
    ``init_options`` (ray). Local runs ignore resources."""
    if name not in EXECUTORS:
        raise MVFAError(f"unknown executor {name!r}; choose from {sorted(EXECUTORS)}.")
    if name == "local":
        return LocalExecutor(progress)
    return EXECUTORS[name](resources, **options)


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise MVFAError(f"--executor {extra} needs {module}: pip install "
                        f"'mvfa-lite[{extra}]'") from None


def _last_error(error: BaseException) -> str:
    """``ErrorType: message`` of the error behind an engine's wrapper, on one line."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    kind = type(cause).__name__
    if lines and kind == "FailedJobError":
        # submitit passes the job's traceback (or sbatch's output) as text: its last line is
        # the error
        return lines[-1].strip()[:300]
    if len(lines) > 1 and kind == "UncompletedJobError":
        # "Job <id> (task: 0) with path <result file>" / "has not produced any output (state)"
        return f"{kind}: the job {lines[1].strip()}"[:300]
    return f"{kind}: {lines[0] if lines else ''}"[:300]
