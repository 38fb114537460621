"""python -m bilstm_jax.evaluation: see bilstm_jax/evaluation/cli.py for the tasks and flags."""

from absl import app

from bilstm_jax.evaluation import cli

if __name__ == "__main__":
  cli.define_flags()
  app.run(cli.main)
