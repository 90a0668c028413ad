"""What a sweep asks of a real cluster before and while its jobs run (:mod:`.executors`).

Before anything is submitted, :func:`check_slurm` refuses in one line what SLURM would refuse
later, or kill silently: no time limit (submitit's default is 5 minutes), a partition that
``sinfo`` does not list, GPUs asked on a partition whose nodes have none. :func:`check_ray`
does the same for a Ray address that does not answer.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from urllib.parse import urlsplit

from ..errors import MVFAError

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
    runtime started here, as ``--help`` says, never a cluster that happens to run here). A
    ``ray://`` address that does not answer is one line."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address.startswith("ray://"):
        where = urlsplit(address)
        try:
            socket.create_connection((where.hostname, where.port or 10001), timeout=5).close()
        except OSError as error:
            raise MVFAError(f"--ray-address {address} does not answer "
                            f"({error.strerror or error}); start the cluster's head with "
                            f"`{RAY_HEAD}`, or leave --ray-address out to run Ray "
                            "here.") from None
    return address


def _query(command: list[str]) -> str | None:
    """The output of a scheduler command, None when it fails or is missing."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
