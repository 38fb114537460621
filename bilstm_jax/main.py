r"""Trains the outfit model, then evaluates it (FITB and compatibility AUC).

  python -m bilstm_jax.main --config=configs/bilstm.py:demo --workdir=/tmp/demo
  python -m bilstm_jax.main --config=configs/bilstm.py --config.data.root=/data/polyvore \
      --workdir=/tmp/bilstm

Several processes (GPU clusters): add --coordinator_address=HOST:PORT --num_processes=N
--process_id=I. Cloud TPU VMs find these by themselves: pass --distributed.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from bilstm_jax import evaluation, input_pipeline, sharding, train
from bilstm_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variants].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and reports go here.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "JAX processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100,
                                  "Seconds without a peer's heartbeat before the job stops.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Initialise multi-host JAX from the environment (Cloud TPU).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # Threefry's partitionable layout makes XLA's CPU compiler take minutes over the
  # encoder's ~100 random initialisers; the classic layout compiles in seconds.
  jax.config.update("jax_threefry_partitionable", False)
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # progress and results are printed; Orbax's chatter is not
  if _NUM_PROCESSES.value > 1:
    sharding.initialize_processes(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  heartbeat_timeout_seconds=_HEARTBEAT.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT.value)
  config = _CONFIG.value
  try:
    model, variables, dataset, step = train.train(config, _WORKDIR.value)
  except (input_pipeline.DataNotFoundError, ConfigError) as e:
    sys.exit(str(e))
  evaluation.evaluate(config, _WORKDIR.value, model, variables, dataset, step,
                      config_name=flags.FLAGS["config"].config_filename)


if __name__ == "__main__":
  app.run(main)
