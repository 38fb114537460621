"""The sharded train step equals the single-device step (8 fake CPU devices, own process)."""

import subprocess
import sys
import textwrap

from tests.helpers import ROOT

_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    import ml_collections
    from bilstm_jax import sharding, train
    from bilstm_jax.models.outfit_lstm import OutfitModel
    from tests.helpers import load_config

    sharding.MIN_SHARDED_SIZE = 0  # shard even the tiny model's parameters
    config = load_config("tiny,cached")
    with config.unlocked():
      config.train.batch_size = 8
      config.train.optimizer = "sgd"
      config.train.learning_rate = 0.5
    model = OutfitModel(config.model, vocab_size=30, feature_dim=16)
    rng = np.random.default_rng(0)

    def batch(i):
      r = np.random.default_rng(i)
      lengths = r.integers(1, 9, size=8).astype(np.int32)
      mask = np.arange(8)[None, :] < lengths[:, None]
      return {"features": r.normal(size=(8, 8, 16)).astype(np.float32), "mask": mask,
              "lengths": lengths, "categories": np.zeros((8, 8), np.int32),
              "tokens": (r.integers(1, 30, size=(8, 8, 3)) * mask[..., None]).astype(np.int32)}

    def run(data, fsdp, devices):
      mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp}), devices)
      trainer = train.make_trainer(model, config, 10, batch(0), mesh)
      state = trainer.init()
      for i in range(4):
        state, terms = trainer.train_step(state, sharding.global_batch(batch(i), mesh))
      specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
      return jax.device_get(state.params), float(terms["loss"]), specs

    ref, ref_loss, _ = run(1, 1, jax.devices()[:1])
    for data, fsdp in [(8, 1), (2, 4)]:
      got, loss, specs = run(data, fsdp, jax.devices())
      assert (fsdp == 1) == (specs == {"P()"}), specs
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, ref)
      print("ok", data, fsdp, loss)
""")


def test_sharded_step_matches_single_device():
  out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("ok") == 2, out.stdout
