"""The paper's figures from run workdirs (matplotlib, PNG).

  samples   Figure 5: one batch of latents fed to every generator of each run; a grid per
            generator side by side, a row per run
  tsne      Figure 6: t-SNE (scikit-learn) of `num` images per generator made from the same
            latents, on Inception pool3 features (or raw pixels), coloured by generator; a
            panel per run
  curves    IS and FID over epochs per generator, from `scores.jsonl`; a panel per metric
            (or, as `reproduce` draws it, a panel per method and metric)
  grids     the sample grids the runs saved at their last evaluation (no checkpoint needed)
Every figure's title says how many samples and which weights / features it used.
"""

import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cgan_jax.analysis.runs import Run  # noqa: E402
from cgan_jax.run import generate, restore  # noqa: E402

FEATURES = ("pool3", "pixels")


def run_images(workdir: str, checkpoint: str, num: int, seed: int) -> tuple[np.ndarray, int]:
  """uint8 [k, num, h, w, 3] from the run's checkpoint, latents from `seed` (all runs the same)."""
  config, state, step, generator = restore.restore_run(workdir, checkpoint)
  fn = generate.make_generate_fn(generator)
  images = generate.generate_all(
    fn,
    state.g_params,
    state.g_batch_stats,
    jax.random.PRNGKey(seed),
    num,
    config.model.z_dim,
    min(num, 250),
  )
  return images, step


def _title(fig, text: str, width: int) -> None:
  fig.suptitle(textwrap.fill(text, width), fontsize=9)


def samples_figure(runs: list[Run], out: str, checkpoint="latest", num=16, seed=0) -> str:
  k_max = max(r.k for r in runs)
  fig, axes = plt.subplots(len(runs), k_max, figsize=(3.0 * k_max, 3.3 * len(runs)), squeeze=False)
  for row, run in zip(axes, runs, strict=True):
    images, step = run_images(run.workdir, checkpoint, num, seed)
    cols = int(np.ceil(np.sqrt(num)))
    for g, ax in enumerate(row):
      ax.axis("off")
      if g < run.k:
        ax.imshow(generate.make_grid(images[g], cols))
        ax.set_title(f"{run.name}: G{g + 1} (step {step})", fontsize=8)
  _title(
    fig,
    f"{num} samples per generator from the same latents (seed {seed}) for every generator "
    f"and run; checkpoint: {checkpoint}",
    40 * k_max,
  )
  fig.tight_layout()
  path = os.path.join(out, "samples.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def tsne_figure(
  runs: list[Run], out: str, checkpoint="latest", num=1000, seed=0, features="pool3", weights="auto"
) -> str:
  from sklearn.manifold import TSNE

  if features not in FEATURES:
    from cgan_jax.errors import choice_error

    raise choice_error("--features", features, FEATURES)
  extractor = None
  if features == "pool3":
    from cgan_jax.quality import evaluator
    from cgan_jax.quality import weights as weights_lib

    w = weights_lib.load_weights_for_cli(weights)
    extractor = evaluator.InceptionExtractor(w, batch_size=min(200, num))
    described = f"Inception pool3 features ({w.name})"
  else:
    described = "raw pixels"
  fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 4.4), squeeze=False)
  for ax, run in zip(axes[0], runs, strict=True):
    images, step = run_images(run.workdir, checkpoint, num, seed)
    k = images.shape[0]
    flat = images.reshape(k * num, *images.shape[2:])
    if extractor is not None:
      feats = extractor.extract(flat, desc=f"pool3 of {run.name}")[0]
    else:
      feats = flat.reshape(len(flat), -1).astype(np.float32) / 127.5 - 1.0
    emb = TSNE(
      2, init="pca", random_state=0, perplexity=min(30.0, (len(feats) - 1) / 3)
    ).fit_transform(np.asarray(feats, np.float64))
    for g in range(k):
      part = emb[g * num : (g + 1) * num]
      ax.scatter(part[:, 0], part[:, 1], s=4, alpha=0.6, color=f"C{g}", label=f"G{g + 1}")
    ax.set_title(f"{run.name} (step {step})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=8)
  _title(
    fig,
    f"t-SNE of {num} images per generator from the same latents (seed {seed}), on "
    f"{described}; checkpoint: {checkpoint}",
    55 * len(runs),
  )
  fig.tight_layout()
  path = os.path.join(out, f"tsne_{features}.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def curves_figure(runs: list[Run], out: str, panels: str = "metric", name="curves.png") -> str:
  """IS, FID and every other registry metric that all runs' evaluations hold, over epochs.

  panels='metric': one panel per metric, a colour per run, a line style per generator.
  panels='method': a column per method and a row per metric, a colour per run of the
  method (its seeds, in order), a line style per generator (`reproduce`'s figure).
  """
  from cgan_jax.quality import registry

  if panels not in ("metric", "method"):
    raise ValueError(f"panels={panels!r}; allowed: 'metric', 'method'")
  last = [g for r in runs for g in r.records[-1]["generators"]]
  metrics = [n for n in ("is", "fid", *registry.names()) if all(n in g for g in last)]
  metrics = list(dict.fromkeys(metrics))
  if panels == "metric":
    grid = [[(metric, runs) for metric in metrics]]
    size = (5.2, 4.0)
  else:
    methods = list(dict.fromkeys(r.method for r in runs))
    grid = [[(metric, [r for r in runs if r.method == m]) for m in methods] for metric in metrics]
    size = (4.0, 3.6)
  rows, cols = len(grid), len(grid[0])
  fig, axes = plt.subplots(
    rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, sharey="row"
  )
  styles = ["-", "--", ":", "-."]
  for row, ax_row in zip(grid, axes, strict=True):
    for (metric, shown), ax in zip(row, ax_row, strict=True):
      for i, run in enumerate(shown):
        epochs = [r["epoch"] for r in run.records]
        for g in range(run.k):
          points = [
            (e, r["generators"][g][metric])
            for e, r in zip(epochs, run.records, strict=True)
            if metric in r["generators"][g]
          ]
          label = f"{run.name} G{g + 1}" if panels == "metric" else f"seed {run.seed}, G{g + 1}"
          ax.plot(
            [e for e, _ in points],
            [v for _, v in points],
            styles[g % 4],
            marker="o",
            ms=3,
            color=f"C{i}",
            label=label,
          )
      ax.set_xlabel("epoch")
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
      m = registry.METRICS[metric]
      if panels == "method":
        ax.set_title(shown[0].method)
      if panels == "metric" or ax is ax_row[0]:
        ax.set_ylabel(f"{m.label} ({'higher' if m.direction == 'max' else 'lower'} is better)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  samples = sorted({str(r.records[-1]["num_samples"]) for r in runs})
  weights = sorted({r.records[-1].get("weights", "") for r in runs})
  reference = sorted({r.records[-1].get("reference", "") for r in runs})
  _title(
    fig,
    f"{' / '.join(samples)} samples per generator per evaluation; reference: "
    f"{'; '.join(reference)}; {'; '.join(weights)}",
    int(12 * size[0] * cols),
  )
  fig.tight_layout()
  path = os.path.join(out, name)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def grids_figure(runs: list[Run], out: str, name="samples.png") -> str:
  """The sample grids each run saved at its last evaluation (`samples/`: the same latents
  for every generator), a row per run, a column per generator. Needs no checkpoint, so it
  works on exported runs (`reproduce --export`)."""
  from PIL import Image

  cols = max(r.k for r in runs)
  fig, axes = plt.subplots(len(runs), cols, figsize=(3.2 * cols, 3.4 * len(runs)), squeeze=False)
  for row, run in zip(axes, runs, strict=True):
    step, epoch = run.records[-1]["step"], run.records[-1]["epoch"]
    for g, ax in enumerate(row):
      ax.axis("off")
      path = os.path.join(run.workdir, "samples", f"step_{step:08d}_g{g}.png")
      if g < run.k and os.path.isfile(path):
        with Image.open(path) as im:
          ax.imshow(np.asarray(im))
        ax.set_title(f"{run.method} G{g + 1}, epoch {epoch}", fontsize=9)
  seeds = ", ".join(sorted({str(r.seed) for r in runs}))
  _title(
    fig, f"Last evaluation's samples, seed {seeds}; the same latents for every generator", 34 * cols
  )
  fig.tight_layout()
  path = os.path.join(out, name)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
