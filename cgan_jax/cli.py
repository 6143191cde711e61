"""Shared CLI plumbing: absl flags parsing and errors that exit with code 2 in one line."""

import logging as py_logging
import sys

from absl import app, flags, logging

from cgan_jax.errors import ConfigError

USAGE_ERROR = 2


def fail(message: str) -> None:
  """Prints `error: message` on one line to stderr and exits with code 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _config_error_in_chain(e: BaseException) -> ConfigError | None:
  while e is not None:
    if isinstance(e, ConfigError):
      return e
    e = e.__cause__ or e.__context__
  return None


def parse_flags(argv):
  """An absl flags parser whose errors are one line and exit code 2 (no traceback).

  ml_collections applies `--config.x=y` overrides while parsing; a mistyped field raises
  KeyError/AttributeError there, and an error in a config file's get_config (an unknown
  variant) arrives wrapped in a flags error.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    config_error = _config_error_in_chain(e)
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    if config_error is not None:
      text = str(config_error)
    if "ConfigError: " in text:  # ml_collections re-raises with the traceback in the text
      fail(text.rsplit("ConfigError: ", 1)[1].splitlines()[0].strip())
    if config_error is not None:
      fail(text)
    fail("bad flag: " + " ".join(text.split()))


class _QuietLibraries(py_logging.Filter):
  """Drops the per-operation INFO chatter of orbax so progress lines stay readable."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def run(main) -> None:
  """`absl.app.run(main)` with one-line errors for user mistakes."""

  def wrapped(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    try:
      return main(argv)
    except ConfigError as e:
      fail(str(e))

  app.run(wrapped, flags_parser=parse_flags)
