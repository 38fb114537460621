"""Converters from the authors' TensorFlow checkpoints (needs the `convert` extra)."""
