"""The paper's figures and tables from run workdirs.

  python -m cgan_jax.analyze table   --runs=DIR[,DIR...] [--pick=best|final|selected] [--out=DIR]
  python -m cgan_jax.analyze curves  --runs=DIR[,DIR...] [--out=FOLDER]
  python -m cgan_jax.analyze samples --runs=DIR[,DIR...] [--num=16] [--checkpoint=latest]
  python -m cgan_jax.analyze tsne    --runs=DIR[,DIR...] [--num=1000] [--features=pool3|pixels]

table (Tables 1-3; the same implementation as `reproduce`'s results.md, analysis/table.py):
per generator, runs that differ only in seed aggregated (method, SN, transfer, k, gates,
IS ± std, FID, epochs, samples; mean ± std over seeds, ddof = 1); each run's best
generator, mean ± std over seeds; per run and generator the picked IS/FID, the final and
best FID and the wall time; as table.md, table.csv (per generator) and table_runs.csv
(per run). --pick: best (each generator's best evaluation), final (Table 3), selected (the
best checkpoint scored again by reproduce, Table 1). curves: IS/FID over epochs
(curves.png). samples (Figure 5): the same latents through every generator of every run
(samples.png). tsne (Figure 6): t-SNE of each run's images, coloured by generator
(tsne_<features>.png). Figures 7 and 8 come from the search: `python -m cgan_jax.search report`.
"""

import os

from absl import flags

from cgan_jax import cli
from cgan_jax.errors import check_writable

FLAGS = flags.FLAGS
COMMANDS = ("table", "curves", "samples", "tsne")


def define_flags() -> None:
  flags.DEFINE_list("runs", None, "Run workdirs (comma-separated).")
  flags.DEFINE_string("out", ".", "Output folder.")
  flags.DEFINE_enum(
    "pick",
    "best",
    ["best", "final", "selected"],
    "table: which evaluation of each generator (see cgan_jax/analysis/table.py).",
  )
  flags.DEFINE_integer("num", None, "samples/tsne: images per generator (16 / 1000).")
  flags.DEFINE_string("checkpoint", "latest", "samples/tsne: 'latest', 'best' or a step.")
  flags.DEFINE_integer("seed", 0, "samples/tsne: the latents' seed.")
  flags.DEFINE_enum("features", "pool3", ["pool3", "pixels"], "tsne: what t-SNE embeds.")
  flags.DEFINE_string(
    "weights", "auto", "tsne with pool3: Inception weights (as --weights of fid)."
  )


def main(argv):
  from cgan_jax.analysis import figures, table
  from cgan_jax.analysis import runs as runs_lib

  if len(argv) != 2 or argv[1] not in COMMANDS:
    got = " ".join(argv[1:]) or "nothing"
    cli.fail(f"give one command, {' | '.join(COMMANDS)} (got {got})")
  command = argv[1]
  if not FLAGS.runs:
    cli.fail(f"{command} needs --runs=DIR[,DIR...] (run workdirs)")
  check_writable(FLAGS.out, "--out")
  runs = [runs_lib.load_run(d) for d in FLAGS.runs]
  os.makedirs(FLAGS.out, exist_ok=True)
  if command == "table":
    md, paths = table.write(table.run_rows(runs, FLAGS.pick), FLAGS.pick, FLAGS.out, "table")
    print(md)
  elif command == "curves":
    paths = [figures.curves_figure(runs, FLAGS.out)]
  elif command == "samples":
    n = FLAGS.num or 16
    paths = [figures.samples_figure(runs, FLAGS.out, FLAGS.checkpoint, n, FLAGS.seed)]
  else:
    n = FLAGS.num or 1000
    paths = [
      figures.tsne_figure(
        runs, FLAGS.out, FLAGS.checkpoint, n, FLAGS.seed, FLAGS.features, FLAGS.weights
      )
    ]
  for p in paths:
    print(p)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
