"""Multi-process start-up and the device mesh.

`initialize()` joins the processes of one job from what the environment says:
  - explicit: `coordinator`, `num_processes`, `process_id` arguments (the `--coordinator ...`
    flags of `clapcomp train`) or the env vars CLAPCOMP_COORDINATOR / CLAPCOMP_NUM_PROCESSES /
    CLAPCOMP_PROCESS_ID (launch/local_multiprocess.sh);
  - SLURM (SLURM_NTASKS > 1) and Cloud TPU pods (TPU_WORKER_HOSTNAMES lists several hosts):
    `jax.distributed.initialize()` detects the cluster by itself;
  - otherwise one process, nothing to do.
CPU processes talk through gloo collectives. `make_mesh` builds the (`data`, `fsdp`) mesh.
"""

from __future__ import annotations

import logging
import os

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH = P(AXES)  # the batch dimension is split over every device


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Joins a multi-process job (see module doc); a no-op for a single process."""
    coordinator = coordinator or os.environ.get("CLAPCOMP_COORDINATOR")
    if num_processes is None and "CLAPCOMP_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["CLAPCOMP_NUM_PROCESSES"])
    if process_id is None and "CLAPCOMP_PROCESS_ID" in os.environ:
        process_id = int(os.environ["CLAPCOMP_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by the CPU backend
    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError(
                f"coordinator {coordinator!r} given without num_processes/process_id; pass "
                "--num_processes and --process_id (or CLAPCOMP_NUM_PROCESSES / CLAPCOMP_PROCESS_ID)"
            )
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()
    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)  # only process 0 reports progress


def make_mesh(data: int = -1, fsdp: int = 1) -> Mesh:
    """A (`data`, `fsdp`) mesh over all devices of all processes; -1 takes what is left."""
    n = jax.device_count()
    if data == -1 and fsdp == -1:
        raise ValueError("mesh.data and mesh.fsdp cannot both be -1; set one of them to a size")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not use the {n} devices; make the product {n}")
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH)
