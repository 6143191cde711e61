"""The paper's figures from run workdirs (matplotlib, PNG).

  samples   Figure 5: one batch of latents fed to every generator of each run; a grid per
            generator side by side, a row per run
  tsne      Figure 6: t-SNE (scikit-learn) of `num` images per generator made from the same
            latents, on Inception pool3 features (or raw pixels), coloured by generator; a
            panel per run
  curves    IS and FID over epochs per generator, from `scores.jsonl`; a panel per metric
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


def curves_figure(runs: list[Run], out: str) -> str:
  from cgan_jax.quality import registry

  last = [g for r in runs for g in r.records[-1]["generators"]]
  # IS, FID, then every other metric of the registry that all runs' evaluations hold
  metrics = [n for n in ("is", "fid", *registry.names()) if all(n in g for g in last)]
  metrics = list(dict.fromkeys(metrics))
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
  styles = ["-", "--", ":", "-."]
  for ax, metric in zip(axes[0], metrics, strict=True):
    for i, run in enumerate(runs):
      epochs = [r["epoch"] for r in run.records]
      for g in range(run.k):
        points = [
          (e, r["generators"][g][metric])
          for e, r in zip(epochs, run.records, strict=True)
          if metric in r["generators"][g]
        ]
        ax.plot(
          [e for e, _ in points],
          [v for _, v in points],
          styles[g % 4],
          marker="o",
          ms=3,
          color=f"C{i}",
          label=f"{run.name} G{g + 1}",
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    m = registry.METRICS[metric]
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
    60 * len(metrics),
  )
  fig.tight_layout()
  path = os.path.join(out, "curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
