"""GPU images often ship JAX without TensorFlow, tensorflow-datasets, tensorboard or clu:
`import cgan_jax` and training from local data must work there (TensorBoard files without
TensorFlow; without tensorboard, metrics go to the log, scores.jsonl and PNG files), and the
tfds source must fail with one clear line."""

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


def test_training_without_tensorflow_and_then_without_tensorboard(tmp_path):
  """One process, two runs: with `tensorboard` but no TensorFlow the run writes a
  TensorBoard file that TensorBoard's own reader (its TF stub here) reads back, scalars,
  images and hparams; with `tensorboard` hidden too, it trains, says once that TensorBoard
  logging is off and writes no event file."""
  r = _run(
    """
    import os, sys
    del sys.modules["tensorboard"]  # this first run has tensorboard, not TensorFlow
    import cgan_jax, cgan_jax.run.train, cgan_jax.reproduce, cgan_jax.main
    from tests.conftest import tiny_config
    c = tiny_config("proposed", num_epochs=1, data__num_train=8)  # one step of batch 8
    with_tb, without_tb = (os.path.join(sys.argv[1], name) for name in ("tb", "no_tb"))
    state = cgan_jax.run.train.train_and_evaluate(c, with_tb).state
    assert int(state.step) == 1, int(state.step)
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(with_tb, size_guidance={ea.IMAGES: 0, ea.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()
    print("TAGS", sorted(tags["scalars"]), sorted(tags["images"]), tags["tensors"])
    print("IMAGE", [(e.step, e.width, e.height) for e in acc.Images("samples/g0")])
    print("SCALAR", [(e.step, e.value) for e in acc.Scalars("gate_d/0")])

    for name in [m for m in sys.modules if m.split(".")[0] == "tensorboard"]:
      del sys.modules[name]
    sys.modules["tensorboard"] = None
    state = cgan_jax.run.train.train_and_evaluate(c, without_tb).state
    assert int(state.step) == 1, int(state.step)
    for name in ("tensorflow", "tensorflow_datasets", "clu"):
      assert sys.modules[name] is None, name
      assert not any(m.startswith(name + ".") for m in sys.modules), name
    print("OK", sorted(os.listdir(without_tb)))
    """,
    tmp_path,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = {line.split(" ", 1)[0]: line for line in r.stdout.splitlines()}
  assert "'g_loss/0'" in lines["TAGS"] and "'d_acc_real'" in lines["TAGS"], lines["TAGS"]
  assert "['samples/g0', 'samples/g1']" in lines["TAGS"], lines["TAGS"]
  assert "_hparams_/session_start_info" in lines["TAGS"], lines["TAGS"]
  assert lines["IMAGE"].startswith("IMAGE [(1, "), lines["IMAGE"]
  assert lines["SCALAR"] == "SCALAR [(1, 1.0)]", lines["SCALAR"]  # a through gate's weight
  assert r.stderr.count("TensorBoard logging is off") == 1
  assert "checkpoints" in lines["OK"] and "samples" in lines["OK"]
  assert len(list((tmp_path / "tb").glob("events.out.tfevents*"))) == 1
  assert not list((tmp_path / "no_tb").glob("events.out.tfevents*"))


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
