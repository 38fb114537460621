r"""Bi-LSTM + VSE outfit compatibility (Han et al., ACM MM 2017).

The base config is the paper's recipe on the real Maryland Polyvore data
(han2017.md section 4). A comma-separated argument after the file name selects
variants, applied left to right:

  data/size:  demo (embedded synthetic Polyvore, small Inception, ~10 min on 2 CPUs),
              tiny (seconds; for tests), cached (frozen encoder, cached features)
  ablations:  no_vse, vse_only, forward_only, backward_only, siamese
  targets:    gpu (one or more GPUs, bfloat16), tpu (a TPU pod slice, bfloat16)

Launch commands:

  python -m bilstm_jax.main --config=configs/bilstm.py:demo --workdir=/tmp/demo
  python -m bilstm_jax.main --config=configs/bilstm.py \
      --config.data.root=/data/polyvore --workdir=/tmp/bilstm
  python -m bilstm_jax.main --config=configs/bilstm.py:demo,no_vse --workdir=/tmp/no_vse
  launch/tpu.sh --name=bilstm --zone=us-central2-b --accelerator=v4-32 \
      --config=configs/bilstm.py:tpu --data=gs://BUCKET/polyvore --workdir=gs://BUCKET/runs/tpu
"""

import ml_collections

ABLATIONS = ("no_vse", "vse_only", "forward_only", "backward_only", "siamese")
VARIANTS = ("demo", "tiny", "cached", "gpu", "tpu") + ABLATIONS


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the paper config with the variants named in `arg` applied."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds parameter init, dropout and the data order

  c.data = d = ml_collections.ConfigDict()
  d.root = ""  # Maryland Polyvore download: <root>/label/*.json and <root>/images/<set_id>/<i>.jpg
  d.synthetic = False  # generate and use the embedded synthetic Polyvore instead of `root`
  d.synthetic_outfits = (1200, 150, 300)  # synthetic train/valid/test outfit counts
  d.synthetic_image_size = 64  # side of the synthetic JPEG images, pixels
  d.synthetic_seed = 0  # seed of the synthetic generator
  d.cache_dir = "~/.cache/bilstm_jax"  # generated datasets and built TFDS records live here
  d.vocab_file = ""  # word dict `<word> <count>` (e.g. shared final_word_dict.txt); "" = build from train
  d.min_word_count = 30  # a training word enters the built vocabulary at this count (original: 30)
  d.max_items = 8  # outfits are padded (or cut) to this many items
  d.max_tokens = 32  # an item name is cut to this many tokens
  d.image_size = 299  # images are resized to image_size x image_size (aspect ratio not kept)
  d.pad_with_last_image = False  # [quirk] pad short outfits by repeating the last image, as the original
  d.encoder_features = ""  # .npz of cached encoder features (ids, features): trains without images
  d.protocol = "original"  # FITB/compat candidates: original (random) or resampled (category-matched)
  d.resample_seed = 0  # seed of the category-matched resampler
  d.num_threads = 8  # threads decoding JPEGs in the input pipeline

  c.model = m = ml_collections.ConfigDict()
  m.kind = "bilstm"  # bilstm (LSTMs + VSE) or siamese (pairwise baseline)
  m.cell = "lstm"  # recurrent cell: lstm (paper) or gru
  m.embed_dim = 512  # size of the VSE space, the LSTM input space and the word vectors
  m.hidden_dim = 512  # LSTM units per direction
  m.init_scale = 0.08  # weights init uniform(-init_scale, init_scale)
  m.lstm_keep_prob = 0.7  # dropout keep probability on LSTM input and output (training)
  m.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters and losses stay float32)
  m.inception = ml_collections.ConfigDict()
  m.inception.depth_multiplier = 1.0  # slim's depth multiplier (1.0 = the paper's network)
  m.inception.min_depth = 16  # slim's minimum channel count under a depth multiplier
  m.inception.keep_prob = 0.8  # dropout keep probability on the pooled features (when trained)
  m.inception.bn_decay = 0.9997  # decay of batch norm's running averages (slim's)
  m.inception.filter_grad = "auto"  # conv dL/dW: "matmul", "xla", or "auto" (matmul on CPUs)
  m.inception.weights = ""  # ImageNet weights: timm .safetensors or Keras .h5; "" = random init
  m.train_inception = True  # fine-tune the encoder (paper); False freezes it (use running BN stats)

  c.loss = l = ml_collections.ConfigDict()
  l.forward_weight = 1.0  # weight of the forward next-item loss
  l.backward_weight = 1.0  # weight of the backward previous-item loss
  l.vse_weight = 1.0  # [quirk] 0.1 in the code until late 2017, then 1.0
  l.vse_margin = 0.2  # contrastive margin of the VSE loss
  l.mask_end_negatives = False  # [quirk] False keeps identical END columns as negatives, as the original
  l.siamese_margin = 0.8  # negatives cost max(cos - margin, 0) in the Siamese baseline
  l.weight_decay = 4e-5  # L2 on Inception conv kernels when the encoder is trained

  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 10  # outfits per global batch
  t.num_steps = 34_865  # steps of the authors' released checkpoint (~20 epochs)
  t.optimizer = "sgd"  # sgd (paper, no momentum), momentum or adam
  t.learning_rate = 0.2  # initial learning rate
  t.lr_decay_factor = 0.5  # staircase decay factor
  t.lr_decay_epochs = 2.0  # decay every this many epochs
  t.clip_norm = 5.0  # global gradient norm clip
  t.log_every = 50  # steps between metric lines
  t.eval_every = 2_000  # steps between validation losses (0 = never)
  t.checkpoint_every = 2_000  # steps between checkpoints
  t.keep_checkpoints = 10  # checkpoints kept besides the best by validation loss
  t.valid_batches = 20  # batches of the valid split per validation loss (0 = all)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis size (-1 = all devices left)
  c.mesh.fsdp = 1  # parameter-sharding axis size

  c.eval = e = ml_collections.ConfigDict()
  e.splits = ("test",)  # splits evaluated after training
  e.protocols = ("original", "resampled")  # FITB/compat protocols evaluated after training
  e.batch_size = 64  # items per feature-extraction batch
  e.generate = 3  # outfits generated as PNG strips after training (0 = none)
  e.text_weight = 2.0  # balance of the text vector when re-ranking generated items
  e.end_threshold = 1e-5  # generation stops once P(END) exceeds this (original); 0 = END is best

  for name in filter(None, (a.strip() for a in arg.split(","))):
    if name not in VARIANTS:
      raise ValueError(f"Unknown config variant {name!r}; choose from {', '.join(VARIANTS)}.")
    _VARIANT_FNS[name](c)
  c.lock()
  return c


def _demo(c):
  """Embedded synthetic Polyvore and a small Inception: the 10-minute CPU demo."""
  c.data.synthetic = True
  c.data.min_word_count = 5
  c.data.image_size = 75  # the smallest input Inception v3 takes
  c.model.inception.depth_multiplier = 0.25
  c.model.inception.bn_decay = 0.99  # running averages must settle within a short run
  c.model.embed_dim = c.model.hidden_dim = 128
  c.train.batch_size = 8
  c.train.num_steps = 1_000
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.valid_batches = 5
  c.eval.end_threshold = 0.0  # 1e-5 suits a 15k-item catalogue, not the demo's 1.5k


def _tiny(c):
  """Seconds on a CPU: the smallest network and dataset that exercise every path."""
  _demo(c)
  c.data.synthetic_outfits = (48, 12, 24)
  c.data.synthetic_image_size = 32
  c.model.inception.depth_multiplier = 0.1
  c.model.inception.min_depth = 8
  c.model.embed_dim = c.model.hidden_dim = 32
  c.train.batch_size = 4
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.eval_every = 4
  c.train.checkpoint_every = 2
  c.train.valid_batches = 2
  c.eval.batch_size = 32
  c.eval.generate = 1


def _cached(c):
  """Two-stage training: the encoder is frozen, its features read from data.encoder_features."""
  c.model.train_inception = False
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  c.train.batch_size = 64


def _scale_batch(c, batch_size):
  """A larger global batch over the same ~20 epochs (the lr schedule counts epochs)."""
  scale = batch_size / c.train.batch_size
  c.train.batch_size = batch_size
  for field in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
    c.train[field] = max(int(c.train[field] / scale), 1)
  c.data.num_threads = 32


def _gpu(c):
  """8 GPUs x 10 outfits; launch/slurm.sbatch or launch/gpu.sh run it on several hosts."""
  c.model.dtype = "bfloat16"
  _scale_batch(c, 80)


def _tpu(c):
  """A v4-32 slice: 16 chips x 20 outfits; launch/tpu.sh runs it."""
  c.model.dtype = "bfloat16"
  _scale_batch(c, 320)


def _no_vse(c):
  c.loss.vse_weight = 0.0


def _vse_only(c):
  c.loss.forward_weight = c.loss.backward_weight = 0.0


def _forward_only(c):
  c.loss.backward_weight = 0.0


def _backward_only(c):
  c.loss.forward_weight = 0.0


def _siamese(c):
  c.model.kind = "siamese"
  c.loss.forward_weight = c.loss.backward_weight = c.loss.vse_weight = 0.0


_VARIANT_FNS = {
    "demo": _demo, "tiny": _tiny, "cached": _cached, "gpu": _gpu, "tpu": _tpu,
    "no_vse": _no_vse, "vse_only": _vse_only, "forward_only": _forward_only,
    "backward_only": _backward_only, "siamese": _siamese,
}
