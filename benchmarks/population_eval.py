"""A population's evaluation: its members scored one after another vs together.

  python benchmarks/population_eval.py                    # smoke size, P = 1, 2, 4
  python benchmarks/population_eval.py --setting=paper --sizes=1,4,8 --num_samples=1000

At one evaluation boundary a population scores every member's k generators on
--num_samples samples each. `one by one` is what it did before (one
`evaluation.score_generators` per member: that member's k sets share each Inception pass);
`together` is what it does now (`evaluation.score_members`: the M x k sets of a latent
batch share the Inception passes). Both draw the same latents per member, so the FIDs must
agree; the script checks that and prints the largest relative difference.

Generators are freshly initialised (different seeds): the timing does not depend on what
they draw. FID only, against the statistics of --num_reference random images; Inception
weights from --weights (default: the offline FID-only fid_helper weights). Median of
--rounds rounds after one untimed warm-up (which compiles Inception).
"""

import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgan_jax import configlib  # noqa: E402
from cgan_jax.quality import registry  # noqa: E402
from cgan_jax.quality import weights as weights_lib  # noqa: E402
from cgan_jax.run import builder, evaluation  # noqa: E402

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setting_config(name: str):
  spec = "configs/search.py:table3" + (",smoke" if name == "smoke" else "")
  config = configlib.load_config(os.path.join(ROOT, spec))
  with config.unlocked():
    del config["search"]
  config.data.source = "synthetic"
  configlib.validate_config(config)
  return config


def main(argv):
  del argv
  config = setting_config(FLAGS.setting)
  program = builder.build(config)
  weights = weights_lib.load_weights(FLAGS.weights)
  extractor = evaluation.InceptionExtractor(weights, FLAGS.inception_batch)
  rng = np.random.default_rng(0)
  s = config.data.image_size
  real = rng.integers(0, 256, (FLAGS.num_reference, s, s, 3), dtype=np.uint8)
  reference = evaluation.reference_statistics(
    real, s, extractor, "random images", cache=os.path.join("/tmp", "population_eval_stats")
  )
  selected = registry.parse("fid", has_logits=weights.has_logits)
  sizes = [int(p) for p in FLAGS.sizes]
  states = [program.init_state(config, jax.random.PRNGKey(m)) for m in range(max(sizes))]
  keys = [jax.random.PRNGKey(100 + m) for m in range(max(sizes))]
  z_dim, bs, num = config.model.z_dim, config.eval.batch_size, FLAGS.num_samples

  def one_by_one(p):
    return [
      evaluation.score_generators(
        program.generate, st.g_params, st.g_batch_stats, key, num, z_dim, extractor,
        reference, bs, selected=selected,
      )
      for st, key in zip(states[:p], keys[:p], strict=True)
    ]  # fmt: skip

  def together(p):
    members = [(st.g_params, st.g_batch_stats, key) for st, key in zip(states, keys, strict=True)][
      :p
    ]
    return evaluation.score_members(
      program.generate, members, num, z_dim, extractor, reference, bs, selected=selected
    )

  def timed(fn, p):
    fn(p)  # warm-up
    times, out = [], None
    for _ in range(FLAGS.rounds):
      t0 = time.perf_counter()
      out = fn(p)
      times.append(time.perf_counter() - t0)
    return statistics.median(times), out

  k = config.model.k
  print(
    f"{FLAGS.setting}: k = {k}, {s} px, {num} samples per generator, Inception batch "
    f"{extractor.batch_size}, weights {weights.name}, backend {jax.default_backend()} "
    f"({jax.devices()[0].device_kind}), median of {FLAGS.rounds} rounds"
  )
  print(f"{'P':>3} {'one by one s':>13} {'together s':>11} {'speed-up':>9} {'max rel dFID':>13}")
  for p in sizes:
    t_a, a = timed(one_by_one, p)
    t_b, b = timed(together, p)
    diff = max(
      abs(x["fid"] - y["fid"]) / abs(y["fid"])
      for ma, mb in zip(a, b, strict=True)
      for x, y in zip(ma, mb, strict=True)
    )
    print(f"{p:>3} {t_a:>13.2f} {t_b:>11.2f} {t_a / t_b:>8.2f}x {diff:>13.1e}")


if __name__ == "__main__":
  flags.DEFINE_enum("setting", "smoke", ["smoke", "paper"], "configs/search.py's size.")
  flags.DEFINE_list("sizes", ["1", "2", "4"], "Population sizes P.")
  flags.DEFINE_integer("num_samples", 200, "Samples per generator.")
  flags.DEFINE_integer("num_reference", 200, "Random reference images.")
  flags.DEFINE_integer("inception_batch", 200, "Images per Inception call.")
  flags.DEFINE_integer("rounds", 3, "Timed rounds (the median is reported).")
  flags.DEFINE_string("weights", "fid_helper", "config.eval.inception_weights spec.")
  app.run(main)
