"""Errors about the user's settings, which the entry points report without a traceback."""


class ConfigError(ValueError):
  """A config value that is not allowed; the message names the field and what it may be."""
