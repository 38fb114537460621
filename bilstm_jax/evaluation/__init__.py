"""Feature extraction and the evaluation tasks: FITB, compatibility AUC, generation, scoring.

`evaluate(config, workdir, model, variables, dataset, step)` is what main runs
after training; `python -m bilstm_jax.evaluation` runs single tasks on a
workdir's checkpoint, `python -m bilstm_jax.evaluation.fusion` fuses workdirs.
"""

from bilstm_jax.evaluation.errors import (ConfigMismatchError, EvaluationError, NotSupportedError,
                                          UnknownItemError, UnreadableImageError)
from bilstm_jax.evaluation.features import ItemFeatures, extract
from bilstm_jax.evaluation.predictor import Predictor, Rule, rule_from_config
from bilstm_jax.evaluation.tasks import evaluate
