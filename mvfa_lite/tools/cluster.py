"""What a sweep asks of a real cluster before and while its jobs run (:mod:`.executors`).

Before anything is submitted, :func:`check_slurm` refuses in one line what SLURM would refuse
later, or kill silently: no time limit (submitit's default is 5 minutes), a partition that
``sinfo`` does not list, GPUs asked on a partition whose nodes have none. :func:`check_ray`
does the same for a Ray address that does not answer (``ray://``, ``host:port`` or ``auto``).

While the jobs run, each cell's folder records the job that owns it (:data:`JOB_FILE`), so a
sweep run again adopts the cells whose jobs are still pending or running instead of
submitting them twice; :class:`SlurmQueue` follows them with ``squeue`` and learns how they
ended from ``sacct`` or, without accounting, ``scontrol``, and :func:`outcome` names a cell
cancelled, timed out or pre-empted as such
(:func:`.executors.outcome`). A line shows the counts as they change
(:class:`Progress`). Ray tasks end with the sweep that started them: nothing to adopt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import MVFAError
from ..outputs import write_json

#: Ray's own command (not mvfa-lite's options) that starts a head a ray:// address reaches
RAY_HEAD = "ray start --head --ray-client-server-port=10001"


def check_slurm(resources) -> str:
    """Refuse what SLURM would refuse or kill silently; return the line to print before
    submitting (time limit, partition, GPUs)."""
    for command in ("sbatch", "sinfo", "squeue"):
        if shutil.which(command) is None:
            raise MVFAError(f"--executor slurm: {command} is not on this machine's PATH; run the "
                            "sweep on the cluster's login node (or try it here with "
                            "--submitit-cluster local).")
    if not resources.timeout_min:
        raise MVFAError("--executor slurm needs a time limit per cell: set resources: "
                        "{timeout_min: MINUTES} in the grid file or --timeout-min MINUTES "
                        "(without one submitit asks for 5 minutes and SLURM kills the cell).")
    partitions, default = slurm_partitions()
    partition = resources.partition or default
    if partition not in partitions:
        listed = ", ".join(f"{name} ({'GPUs' if gpu else 'no GPUs'})"
                           for name, gpu in partitions.items())
        raise MVFAError(f"--partition {resources.partition} is not a partition of this "
                        f"cluster; sinfo lists {listed}." if resources.partition else
                        f"--executor slurm: this cluster has no default partition; give "
                        f"--partition, one of {listed}.")
    if resources.gpus and not partitions[partition]:
        with_gpus = [name for name, gpu in partitions.items() if gpu]
        raise MVFAError(f"--gpus {resources.gpus} asked on partition {partition}, whose nodes "
                        "have no GPUs (sinfo lists no gpu gres there); "
                        + (f"use --partition {' or '.join(with_gpus)}." if with_gpus else
                           "this cluster has none: set --gpus 0."))
    return (f"time limit {resources.timeout_min} min per cell, partition {partition}, "
            f"{resources.gpus or 0} GPU(s) per cell")


def slurm_partitions() -> tuple[dict[str, bool], str | None]:
    """{partition: whether a node of it has GPUs} and the default partition, from sinfo."""
    listing = _query(["sinfo", "-h", "-o", "%P %G"])
    if listing is None:
        raise MVFAError("--executor slurm: sinfo failed (is slurmctld running and reachable?); "
                        "run `sinfo` to see why.")
    partitions, default = {}, None
    for line in listing.splitlines():
        name, _, gres = line.strip().partition(" ")
        if name.endswith("*"):
            name = default = name[:-1]
        partitions[name] = partitions.get(name, False) or "gpu" in gres
    return partitions, default


def check_ray(address: str | None) -> str:
    """The address to pass to ``ray.init``: the one given, else $RAY_ADDRESS, else "local" (a
    runtime started here, as ``--help`` says, never a cluster that happens to run here). An
    address that does not answer is one line: ``ray://``, a GCS ``host:port``, and ``auto``
    where a cluster is recorded on this machine (a head that was killed leaves its address
    there, and Ray would retry it for minutes). Call it before Ray reads its settings
    (:func:`_ray_token_mode`)."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        _ray_token_mode()
    if address == "auto":
        recorded = ray_temp_dir() / "ray_current_cluster"      # where `ray start` records it
        gcs = recorded.read_text().strip() if recorded.is_file() else ""
        if gcs:
            _must_answer(gcs, f"--ray-address auto: the Ray cluster recorded in {recorded} "
                              f"({gcs})")
    elif address != "local" and (address.startswith("ray://") or "://" not in address):
        _must_answer(address, f"--ray-address {address}")
    return address


def _must_answer(address: str, named: str) -> None:
    """MVFAError, one line, unless something listens at ``address`` (ray://host:port or
    host:port) within 5 seconds."""
    where = urlsplit(address if "://" in address else f"//{address}")
    default = 10001 if address.startswith("ray://") else 6379     # Ray's own defaults
    try:
        socket.create_connection((where.hostname, where.port or default), timeout=5).close()
    except (OSError, ValueError) as error:
        said = getattr(error, "strerror", None) or error
        raise MVFAError(f"{named} does not answer ({said}); start the cluster's head with "
                        f"`{RAY_HEAD}`, or leave --ray-address out to run Ray "
                        "here.") from None


def _ray_token_mode() -> None:
    """Ray turns token authentication on for a head that finds a token ($RAY_AUTH_TOKEN,
    $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), but a client sends it only under
    RAY_AUTH_MODE=token: without, ray:// times out and a GCS address retries forever. With
    a token at hand and no mode chosen, token it is."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not os.environ.get("RAY_AUTH_MODE") and (os.environ.get("RAY_AUTH_TOKEN")
                                               or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def ray_temp_dir() -> Path:
    """Ray's folder on this machine: $RAY_TMPDIR/ray, else /tmp/ray."""
    return Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray"


def ray_logs() -> str:
    """Where Ray writes the logs of its newest session on this machine."""
    return str(ray_temp_dir() / "session_latest" / "logs")


def _query(command: list[str]) -> str | None:
    """The output of a scheduler command, None when it fails or is missing."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


# --- one owner per cell: the jobs of a sweep, recorded in the cells' folders ---------------
JOB_FILE = "job.json"           # the SLURM job that owns a cell: its id and log
#: SLURM states of a job that has not ended (a requeued job is pending again)
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
        "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"}
#: how a job that ended without a result is named
ENDED = {"CANCELLED": "cancelled", "TIMEOUT": "timed out at its time limit",
         "PREEMPTED": "pre-empted", "NODE_FAIL": "lost its node", "BOOT_FAIL": "lost its node",
         "OUT_OF_MEMORY": "ran out of memory", "DEADLINE": "passed its deadline",
         "FAILED": "failed"}


def record_job(folder, job_id: str, log: str) -> None:
    """Write down which job owns the cell in ``folder`` (read again by :func:`recorded_job`)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / JOB_FILE, {"job_id": job_id, "log": log,
                                   "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def recorded_job(folder) -> dict | None:
    try:
        record = json.loads((folder / JOB_FILE).read_text())
        return record if isinstance(record.get("job_id"), str) else None
    except (OSError, ValueError, AttributeError):
        return None


class SlurmQueue:
    """What SLURM says of a sweep's jobs: ``squeue`` for the jobs that have not ended, then
    ``sacct`` (with accounting) or ``scontrol`` (without, while SLURM remembers the job) for
    how the others ended; a job that none of them knows counts as ended, state unknown, so a
    sweep never waits forever."""

    def live(self) -> dict[str, str]:
        """{job id: state} of this user's jobs that have not ended, array tasks one by one."""
        listing = _query(["squeue", "-h", "-r", "--me", "-o", "%i %T"])
        if listing is None:
            raise MVFAError("--executor slurm: squeue failed (is slurmctld running and "
                            "reachable?); run `squeue` to see why.")
        return dict(line.split()[:2] for line in listing.splitlines() if len(line.split()) > 1)

    def ended(self, job_id: str) -> str | None:
        """How the job ended (COMPLETED, CANCELLED, TIMEOUT, ...); None when no record says."""
        listing = _query(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id])
        for line in (listing or "").splitlines():
            found, _, state = line.strip().partition("|")
            if found == job_id and state:
                return state.split()[0]
        shown = _query(["scontrol", "-o", "show", "job", job_id]) or ""
        state = re.search(r"\bJobState=(\S+)", shown)
        return state.group(1) if state else None


class Progress:
    """One line each time the counts change: pending / running / done / failed (names)."""

    def __init__(self, total: int):
        self.total, self.shown = total, None

    def show(self, states: dict[str, str], results: list) -> None:
        failed = [r.name for r in results if r.failed]
        running = sum(state != "PENDING" for state in states.values())
        line = (f"jobs: {len(states) - running} pending, {running} running, "
                f"{len(results) - len(failed)} done, {len(failed)} failed"
                + (f" ({', '.join(failed)})" if failed else "") + f" of {self.total}")
        if line != self.shown:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
            self.shown = line
