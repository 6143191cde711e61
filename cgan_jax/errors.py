"""User-facing errors.

A `ConfigError` is a mistake in what the user asked for (a config field, a CLI flag, a
path). Its message is one line that names the field and what is allowed; the CLIs print it
and exit with code 2 instead of showing a traceback.
"""


class ConfigError(ValueError):
  """A user's input is invalid; the message is one line naming the field."""


def choice_error(field: str, value, allowed) -> ConfigError:
  """Builds the standard 'unknown value' error for a field with a fixed set of values."""
  allowed_txt = ", ".join(repr(a) for a in allowed)
  return ConfigError(f"{field}={value!r} is not allowed; choose one of: {allowed_txt}")
