"""IS, FID and the registry's other metrics of every generator of a trained run.

  python -m cgan_jax.evaluate --workdir=DIR [--checkpoint=best|latest|STEP]
      [--num_samples=50000] [--weights=auto|fid_helper|FILE] [--batch_size=200]
      [--metrics=fid,is,kid,precision,recall,density,coverage]

Prints one row per generator (IS ± std over 10 splits, FID, and a column per other metric
of `--metrics`, default the run's `config.eval.metrics`) under a header that names
the checkpoint, the sample count, the reference split and the Inception weights. The
reference is the run's own training data at its training resolution, as many images as
its `config.eval.num_reference` (so the numbers compare with its `scores.jsonl`), or
`--num_reference=N` (0: all).
"""

import jax
from absl import flags

from cgan_jax import cli, configlib
from cgan_jax.errors import ConfigError
from cgan_jax.quality import registry
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import evaluation as evaluator
from cgan_jax.run import generate, input_pipeline, restore

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that the CLI modules can be imported together."""
  flags.DEFINE_string("workdir", None, "Workdir of a training run.")
  flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  flags.DEFINE_integer("num_samples", 50_000, "Samples per generator.")
  flags.DEFINE_string("weights", None, "Inception weights; default: the run's eval config.")
  flags.DEFINE_integer("batch_size", None, "Inception batch size; default: the run's.")
  flags.DEFINE_integer("seed", 0, "Seed of the latents.")
  flags.DEFINE_integer(
    "num_reference",
    None,
    "FID reference: the first N training images (0: all); default: the run's own "
    "config.eval.num_reference, so that the numbers compare with its scores.jsonl.",
  )
  flags.DEFINE_string(
    "metrics",
    None,
    "Comma-separated metrics of the registry (fid, is, kid, precision, recall, density, "
    "coverage; 'auto': FID, and IS with the full weights); default: the run's "
    "config.eval.metrics.",
  )


def evaluate_run(
  workdir,
  which="best",
  num_samples=50_000,
  weights=None,
  batch_size=None,
  seed=0,
  num_reference=None,
  metric_names=None,
):
  """Returns (header, scores) for checkpoint `which` of the run in `workdir`.

  The FID reference is the run's own (its first `config.eval.num_reference` training images,
  all when 0) unless `num_reference` says otherwise.
  """
  if num_reference is not None and num_reference < 0:
    raise ConfigError(f"--num_reference={num_reference} must be >= 0 (0: all training images)")
  if num_samples < evaluator.IS_SPLITS:
    raise ConfigError(f"--num_samples={num_samples} must be >= {evaluator.IS_SPLITS}")
  if batch_size is not None and batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size} must be >= 1")
  config, state, step, generator = restore.restore_run(workdir, which)
  spec = weights if weights is not None else config.eval.inception_weights
  w = weights_lib.load_weights_for_cli(spec)
  bs = batch_size or config.eval.batch_size
  extractor = evaluator.InceptionExtractor(w, bs)
  if metric_names is None:
    selected = registry.parse(configlib.eval_metrics(config), "config.eval.metrics", w.has_logits)
  else:
    selected = registry.parse(metric_names, "--metrics", w.has_logits)
  images = input_pipeline.load_images(config)
  if num_reference is None:
    num_reference = config.eval.get("num_reference", 0)
  description = evaluator.describe_reference(config, len(images))
  if num_reference and num_reference < len(images):
    description += f" (the first {num_reference} of {len(images)})"
    images = images[:num_reference]
  reference = evaluator.reference_statistics(
    images,
    config.data.image_size,
    extractor,
    description,
    keep_features=registry.REFERENCE_FEATURES in registry.needs(selected),
  )
  scores = evaluator.score_generators(
    generate.make_generate_fn(generator),
    state.g_params,
    state.g_batch_stats,
    jax.random.PRNGKey(seed),
    num_samples,
    config.model.z_dim,
    extractor,
    reference,
    bs,
    selected=selected,
  )
  header = (
    f"{workdir} checkpoint {which} (step {step}): {num_samples} samples per generator; "
    f"reference: {reference.description}; Inception: {w.name}"
  )
  if not w.has_logits:
    header += "; IS unavailable: these weights have no classifier logits"
  return header, scores


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  header, scores = evaluate_run(
    FLAGS.workdir,
    FLAGS.checkpoint,
    FLAGS.num_samples,
    FLAGS.weights,
    FLAGS.batch_size,
    FLAGS.seed,
    FLAGS.num_reference,
    FLAGS.metrics,
  )
  print(evaluator.format_table(scores, header))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
