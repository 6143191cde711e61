"""User-facing errors.

A `ConfigError` is a mistake in what the user asked for (a config field, a CLI flag, a
path). Its message is one line that names the field and what is allowed; the CLIs print it
and exit with code 2 instead of showing a traceback.
"""

import os


class ConfigError(ValueError):
  """A user's input is invalid; the message is one line naming the field."""


def choice_error(field: str, value, allowed) -> ConfigError:
  """Builds the standard 'unknown value' error for a field with a fixed set of values."""
  allowed_txt = ", ".join(repr(a) for a in allowed)
  return ConfigError(f"{field}={value!r} is not allowed; choose one of: {allowed_txt}")


def check_writable(path: str, field: str, value: str | None = None) -> None:
  """Raises ConfigError unless `path` is a writable folder or can be created as one.

  Args:
    path: a folder that will be written to (it may not exist yet).
    field: the flag or config field that named it, for the message.
    value: the field's value when it is not `path` itself (a file inside it).
  """
  if value is not None:
    try:
      check_writable(path, "its folder")
    except ConfigError as e:
      raise ConfigError(f"{field}={value!r} cannot be written: {e}") from None
    return
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise ConfigError(f"{field}={path!r} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise ConfigError(f"{field}={path!r} is not writable")
    return
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"{field}={path!r} cannot be created: {parent!r} is not a writable directory")
