"""bilstm-jax: Learning Fashion Compatibility with Bidirectional LSTMs, in JAX/Flax."""
