"""Data parallelism over a 1-D ``('data',)`` mesh, single- and multi-host.

The design follows big_vision: parameters are replicated (``P()``), batches are
sharded along their leading axis (``P('data')``), and the train step is a plain
``jax.jit`` whose losses are *global* means. XLA inserts the gradient
all-reduce itself, so there is no ``pmap`` and no manual ``psum``.

A consequence worth knowing: BatchNorm statistics computed inside a jitted step
are statistics of the **global** batch (SyncBN), whatever the device count.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Optional[list] = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process).

    The axis type is ``Auto`` (classic GSPMD propagation); JAX 0.10's default
    changed to ``Explicit``, which would make every op demand explicit specs.
    """
    devices = list(jax.devices()) if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must be a non-empty list")
    return Mesh(
        np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh``.

    In multi-process runs each process must pass the same host values (they
    do: every process builds the state from the same seed).
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
        tree,
    )


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles global arrays from this process's rows of the global batch.

    Each process passes its own ``local_batch`` (rows ``[p*L, (p+1)*L)`` of
    the global batch); the result is one global ``jax.Array`` per leaf,
    sharded along the batch axis over the whole mesh.
    """
    sharding = data_sharded(mesh)
    num_devices = mesh.devices.size

    def to_global(a):
        a = np.asarray(a)
        global_rows = a.shape[0] * jax.process_count()
        if global_rows % num_devices:
            raise ValueError(
                f"global batch size {global_rows} must be divisible by the "
                f"number of devices ({num_devices})"
            )
        return jax.make_array_from_process_local_data(sharding, a)

    return jax.tree.map(to_global, local_batch)


def shard_host_batch(global_batch: Any, mesh: Mesh) -> Any:
    """Global arrays from a host batch that *every* process holds whole (eval).

    Each process copies only the rows its own devices hold. Unlike
    ``jax.device_put`` onto a multi-process sharding, this needs no
    cross-process check that all processes passed equal values.
    """
    sharding = data_sharded(mesh)

    def to_global(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(to_global, global_batch)


def fetch_to_host(tree: Any) -> Any:
    """Brings (possibly multi-host) arrays back as host numpy arrays.

    Replicated arrays are fully addressable everywhere; sharded ones are
    gathered across processes first.
    """

    def fetch(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(fetch, tree)


def initialize_distributed(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    local_device_ids: Optional[list[int]] = None,
) -> bool:
    """Starts ``jax.distributed`` when a multi-process run is requested.

    Arguments fall back to the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). When none of them is given,
    JAX's own cluster auto-detection (TPU pods, SLURM, Open MPI) is tried only if
    ``ADVCORE_AUTO_DISTRIBUTED=1``: on a single workstation that detection is
    unnecessary. Returns True when distributed mode was initialised.
    """
    coordinator_address = coordinator_address or os.environ.get(
        "JAX_COORDINATOR_ADDRESS", ""
    )
    if num_processes <= 0:
        num_processes = int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    if process_id < 0:
        process_id = int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)

    if coordinator_address:
        if num_processes < 1:
            raise ValueError(
                "num_processes must be >= 1 when coordinator_address is set, "
                f"got {num_processes}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must be in [0, {num_processes}), got {process_id}"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
        )
        return True
    if os.environ.get("ADVCORE_AUTO_DISTRIBUTED") == "1":
        jax.distributed.initialize()  # cluster auto-detection (TPU / SLURM / MPI)
        return True
    return False


def is_main_process() -> bool:
    return jax.process_index() == 0
