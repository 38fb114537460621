"""The device mesh, and how the train state and batches are laid out on it.

Two axes: `data` splits the batch; `fsdp` splits the batch too and also shards
the largest dimension of big parameters (and their optimiser state), FSDP-style.
"""

import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Parameters smaller than this stay replicated: sharding them costs more than it saves.
MIN_SHARDED_SIZE = 2**16


def initialize_processes(coordinator_address: str, num_processes: int, process_id: int,
                         **kwargs: Any) -> None:
  """Joins processes into one JAX job; call before any JAX computation.

  Accelerators use their own collectives; CPU devices use gloo. XLA's
  concurrency-optimised CPU scheduler can order independent collectives
  differently in each process, and gloo then aborts with "Received data size
  doesn't match expected size" (2 processes on the demo config did); XLA's
  default scheduler keeps one order everywhere.
  """
  flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  fsdp = mesh_config.fsdp
  data = mesh_config.data if mesh_config.data != -1 else n // max(fsdp, 1)
  if fsdp < 1 or data < 1 or data * fsdp != n:
    raise ValueError(f"mesh.data={mesh_config.data} x mesh.fsdp={fsdp} does not cover the "
                     f"{n} devices; set them so that data * fsdp = {n} (data=-1 fills it in).")
  devices = np.asarray(devices).reshape(data, fsdp)
  return Mesh(devices, BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _param_spec(shape: tuple[int, ...], fsdp: int) -> P:
  if fsdp == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of an abstract train state."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, _param_spec(x.shape, fsdp)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) dimension is split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's share of a batch into global arrays."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
