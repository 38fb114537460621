"""The evaluation layer's errors: each names the file, item or setting at fault and what to do.

All are ValueError subclasses, so a command line catches one type and prints the
message instead of a traceback from inside JAX.
"""


class EvaluationError(ValueError):
  """Bad input to an evaluation task."""


class UnknownItemError(EvaluationError):
  """An item id that the feature table does not hold."""

  def __init__(self, item_ids, where: str = "the feature table"):
    self.item_ids = list(item_ids)
    shown = ", ".join(repr(i) for i in self.item_ids[:5])
    more = f" (and {len(self.item_ids) - 5} more)" if len(self.item_ids) > 5 else ""
    super().__init__(
        f"Unknown item id(s) {shown}{more}: not in {where}. Item ids are "
        f"'<set_id>_<index>' of the evaluated split; list them with "
        f"`python -m bilstm_jax.evaluation --task=extract` and pick ids from the .npz.")


class UnreadableImageError(EvaluationError):
  """An image file that PIL cannot open or decode."""


class ConfigMismatchError(EvaluationError):
  """Model variables (or saved features/scores) made under a different config."""


class NotSupportedError(EvaluationError):
  """A task this kind of model cannot do (e.g. generation without an LSTM)."""
