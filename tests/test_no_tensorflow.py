"""GPU images often ship JAX without TensorFlow, tensorflow-datasets, tensorboard or clu:
`import cgan_jax` and training from local data must work there (metrics then go to the log,
scores.jsonl and PNG files), and the tfds source must fail with one clear line."""

import subprocess
import sys
import textwrap

from .conftest import ROOT

# Makes the packages a GPU image lacks look uninstalled in the child process: a None in
# sys.modules makes `import` raise ModuleNotFoundError and `importlib.util.find_spec`
# return None, as for a package that is not there.
HIDE = textwrap.dedent(
  """
  import sys
  for name in ("tensorflow", "tensorflow_datasets", "tensorboard", "clu"):
    sys.modules[name] = None
  """
)


def _run(body: str, tmp_path):
  script = HIDE + textwrap.dedent(body)
  return subprocess.run(
    [sys.executable, "-c", script, str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_import_and_one_training_step_without_tensorflow(tmp_path):
  r = _run(
    """
    import os, sys
    import cgan_jax, cgan_jax.run.train, cgan_jax.reproduce, cgan_jax.main
    from tests.conftest import tiny_config
    c = tiny_config("proposed", num_epochs=1, data__num_train=8)  # one step of batch 8
    state = cgan_jax.run.train.train_and_evaluate(c, os.path.join(sys.argv[1], "run")).state
    assert int(state.step) == 1, int(state.step)
    for name in ("tensorflow", "tensorflow_datasets", "tensorboard", "clu"):
      assert sys.modules[name] is None, name
      assert not any(m.startswith(name + ".") for m in sys.modules), name
    print("OK", sorted(os.listdir(os.path.join(sys.argv[1], "run"))))
    """,
    tmp_path,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "OK" in r.stdout
  assert "TensorBoard logging is off" in r.stderr
  assert "checkpoints" in r.stdout and "samples" in r.stdout
  assert not list((tmp_path / "run").glob("events.out.tfevents*"))


def test_tfds_source_without_tensorflow_datasets_is_one_config_error(tmp_path):
  r = _run(
    """
    from cgan_jax.run import input_pipeline
    from cgan_jax.errors import ConfigError
    from tests.conftest import tiny_config
    c = tiny_config("proposed", data__source="tfds")
    try:
      input_pipeline.load_images(c)
    except ConfigError as e:
      print("ConfigError:", e)
    """,
    tmp_path,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  line = r.stdout.strip()
  assert line.startswith("ConfigError: config.data.source='tfds' needs tensorflow-datasets")
  assert "cifar_archive" in line and len(line.splitlines()) == 1
