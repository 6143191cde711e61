"""Shared CLI plumbing: absl flags parsing, --help, and errors that exit with code 2 in one line.

Every CLI module defines its flags in a `define_flags()` called only when it runs as a
program, so that the modules can be imported together (tests, notebooks) without absl's
"flag defined twice".
"""

import logging as py_logging
import os
import re
import sys

from absl import app, flags, logging

from cgan_jax.errors import ConfigError

USAGE_ERROR = 2
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def fail(message: str) -> None:
  """Prints `error: message` on one line to stderr and exits with code 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _chain(e: BaseException):
  while e is not None:
    yield e
    e = e.__cause__ or e.__context__


def _config_error_in_chain(e: BaseException) -> ConfigError | None:
  return next((x for x in _chain(e) if isinstance(x, ConfigError)), None)


def describe_flag_error(e: BaseException, argv) -> str:
  """One line for a flag-parsing error (ml_collections wraps a bad override in up to three
  exceptions whose text is the repr of the first)."""
  config_error = _config_error_in_chain(e)
  if config_error is not None:
    text = str(config_error)
    if "ConfigError: " in text:  # ml_collections re-raises with the traceback in the text
      text = text.rsplit("ConfigError: ", 1)[1].splitlines()[0]
    return text.strip()
  texts = [str(x.args[0] if x.args else x) for x in _chain(e)]
  for text in texts:
    m = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    if m:
      good, bad = m.groups()
      return f"{_override_named(argv, bad)}: no config field {bad!r}; did you mean {good!r}?"
  if isinstance(e, KeyError | AttributeError) or any(isinstance(x, KeyError) for x in _chain(e)):
    bad = re.sub(r"^['\"]|['\"]$", "", texts[-1].strip())
    return f"{_override_named(argv, bad)}: no config field {bad!r}"
  return "bad flag: " + " ".join(texts[0].split())


def _override_named(argv, field: str) -> str:
  """The `--config.x.field` argument that names `field` (for the message)."""
  for arg in argv[1:]:
    name = arg.split("=", 1)[0]
    if name.startswith("--") and re.search(rf"(^--|\.){re.escape(field)}(\.|$)", name):
      return name
  return "a --config override"


def _print_help(extra_help: str) -> None:
  main = sys.modules.get("__main__")
  doc = (getattr(main, "__doc__", None) or "").strip()
  if doc:
    print(doc + "\n")
  if extra_help:
    print(extra_help.strip() + "\n")
  print("Flags:")
  print(flags.FLAGS.main_module_help())


def make_flags_parser(extra_help: str = ""):
  """An absl flags parser: --help prints the usage and exits 0; errors are one line with
  exit code 2 (no traceback).

  ml_collections applies `--config.x=y` overrides while parsing; a mistyped field raises
  KeyError/AttributeError there, and an error in a config file's get_config (an unknown
  variant) arrives wrapped in a flags error.
  """

  def parse(argv):
    if any(a in HELP_FLAGS for a in argv[1:]):
      _print_help(extra_help)
      sys.exit(0)
    try:
      return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
      fail(describe_flag_error(e, argv))

  return parse


def config_from_flag(name: str = "config"):
  """The config of a `config_flags` flag; a file that does not load is one ConfigError.

  ml_collections defers a failed load to the first access (with a multi-line message and
  the original traceback), so the CLIs read their config through here.
  """
  try:
    config = getattr(flags.FLAGS, name)
    if config is not None:
      config.keys()  # a config that failed to load raises on first use
    return config
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - ml_collections raises OSError, ImportError, ...
    config_error = _config_error_in_chain(e)
    if config_error is not None:
      raise config_error from None
    text = "\n".join(str(x) for x in _chain(e))
    missing = re.search(r"No such file or directory: '([^']+)'", text)
    spec = flags.FLAGS[name].serialize().split("=", 1)[-1]
    if missing:
      path = missing.group(1)
      where = "" if os.path.isabs(path) else f" (resolved: {os.path.abspath(path)})"
      raise ConfigError(f"--{name}={spec}: no config file at {path!r}{where}") from None
    reason = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), repr(e))
    raise ConfigError(f"--{name}={spec}: the config file did not load ({reason})") from None


class _QuietLibraries(py_logging.Filter):
  """Drops the per-operation INFO chatter of orbax so progress lines stay readable, and
  JAX's notice that there is no TPU backend (a plain CPU machine has none)."""

  def filter(self, record):
    if record.levelno < py_logging.WARNING and "/orbax/" in record.pathname:
      return False
    return "Unable to initialize backend 'tpu'" not in record.getMessage()


def quiet_libraries() -> None:
  """Installs `_QuietLibraries` on absl's handler and JAX's loggers; TensorFlow's C++
  notices (its oneDNN banner) off unless the user set TF_CPP_MIN_LOG_LEVEL."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  quiet = _QuietLibraries()
  logging.get_absl_handler().addFilter(quiet)
  for name in ("jax._src.xla_bridge", "jax._src.xla_bridge.py"):
    py_logging.getLogger(name).addFilter(quiet)


def run(main, extra_help: str = "") -> None:
  """`absl.app.run(main)` with one-line errors for user mistakes and --help exiting 0."""

  def wrapped(argv):
    quiet_libraries()
    try:
      return main(argv)
    except ConfigError as e:
      fail(str(e))

  quiet_libraries()
  app.run(wrapped, flags_parser=make_flags_parser(extra_help))
