"""The search's report: the best graphs as a table, the best graph drawn like the paper's
Figure 8, and the objective per trial by transfer method like its Figure 7.

  best.csv, best.md   the top-N graphs: gates, objective, per-generator IS/FID of the
                      trial's result (its best evaluation, or its last with
                      config.search.select='last'), train/eval time, the re-train command;
                      best.md also counts the distinct graphs trained
  graph_best.png      the best graph: nodes D and G_1..G_k, one arrow per edge (D -> G_i
                      for L_D,i; G_t -> G_s for L_t,s), coloured and styled by gate
  figure7.png         the objective of every finished trial, a box per transfer method
                      (of this study and of the studies given with --compare: one study per
                      method gives the paper's 1,500 trials per method)
"""

import csv
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from cgan_jax.core import gates as gates_lib  # noqa: E402
from cgan_jax.core import graph as graph_lib  # noqa: E402
from cgan_jax.quality import registry  # noqa: E402
from cgan_jax.search import study as study_lib  # noqa: E402

# gate -> (colour, line style, label): cutoff is drawn faint, as an edge that passes nothing.
GATE_STYLE = {
  "through": ("black", "solid", "through"),
  "cutoff": ("0.8", "dotted", "cutoff (no loss)"),
  "positive_linear": ("tab:blue", "dashed", "positive linear (0 -> 1)"),
  "negative_linear": ("tab:red", "dashdot", "negative linear (1 -> 0)"),
}
assert set(GATE_STYLE) == set(gates_lib.GATE_NAMES)


def _label(name: str) -> str:
  """A metric's display label from the registry ('IS', 'KID', ...)."""
  return registry.METRICS[name].label if name in registry.METRICS else name.upper()


def _metric_columns(trials) -> list[tuple[str, int, str]]:
  """(column, generator index, key) for the registry's metrics (and their spreads) that the
  best records hold."""
  cols = []
  k = max((len(t.user_attrs.get("best", {}).get("generators", [])) for t in trials), default=0)
  keys = [key for n in ("is", "fid", *registry.names()) for key in (n, f"{n}_std")]
  keys = list(dict.fromkeys(keys))
  for i in range(k):
    for key in keys:
      if any(key in t.user_attrs.get("best", {}).get("generators", [{}] * k)[i] for t in trials):
        name = key.removesuffix("_std")
        label = _label(name) + (" std" if key.endswith("_std") else "")
        cols.append((f"G{i + 1} {label}", i, key))
  return cols


def rows(study: optuna.Study, top: int) -> list[dict]:
  trials = study_lib.best_trials(study, top)
  cols = _metric_columns(trials)
  out = []
  for rank, t in enumerate(trials, 1):
    best = t.user_attrs.get("best", {})
    row = {
      "rank": rank,
      "trial": t.number,
      "state": t.state.name.lower(),
      "objective": round(float(t.value), 4),
      "transfer": t.user_attrs.get("transfer", ""),
      "gates_d": t.user_attrs.get("gates_d", ""),
      "gates_transfer": t.user_attrs.get("gates_transfer", ""),
      "eval_epoch": best.get("epoch", ""),
      "samples": best.get("num_samples", ""),
    }
    for name, i, metric in cols:
      row[name] = (
        round(float(best["generators"][i][metric]), 3) if metric in best["generators"][i] else ""
      )
    row["train_s"] = t.user_attrs.get("train_s", "")
    row["eval_s"] = t.user_attrs.get("eval_s", "")
    row["command"] = t.user_attrs.get("command", "")
    out.append(row)
  return out


def write_tables(study: optuna.Study, out_dir: str, top: int) -> tuple[str, str]:
  table = rows(study, top)
  if not table:
    raise ValueError("the study has no finished trial with a value yet")
  csv_path = os.path.join(out_dir, "best.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
  space = study.user_attrs.get("space", {})
  objective = space.get("objective", "objective")
  c = study_lib.counts(study)
  n_surplus = c[study_lib.SURPLUS]
  graphs = distinct_graphs(study)
  rule = "its last evaluation" if space.get("select") == "last" else "its best evaluation"
  surplus = f" ({n_surplus} surplus, dropped before training)" if n_surplus else ""
  lines = [
    f"# Search {study.study_name!r}: the top {len(table)} graphs by {_label(objective)}",
    "",
    f"{c['finished']} finished trials ({c['complete']} complete, {c['pruned']} pruned), "
    f"{c['fail']} failed, {c['running']} running{surplus}. k = {space.get('k')}, gates from "
    f"{', '.join(space.get('gates', []))}; {space.get('num_epochs')} epochs per trial, "
    f"{space.get('eval_samples')} samples per generator every "
    f"{space.get('eval_every_epochs')} epochs; objective: the "
    f"{'best generator' if not space.get('generator') else 'G' + str(space.get('generator'))}'s "
    f"{_label(objective)} at {rule} (eval_epoch). {graphs['distinct']} distinct graphs "
    f"trained; {graphs['reused']} finished trials drew a graph already trained and reused "
    f"its result. gates_transfer: row t = teacher G_t, column s = student G_s.",
    "",
  ]
  shown = [key for key in table[0] if key != "command"]
  lines.append("| " + " | ".join(shown) + " |")
  lines.append("|" + "---|" * len(shown))
  for r in table:
    lines.append(
      "| "
      + " | ".join(f"`{r[key]}`" if key.startswith("gates") else str(r[key]) for key in shown)
      + " |"
    )
  lines += [
    "",
    "Re-train the best graph with the full evaluation:",
    "",
    "```bash",
    table[0]["command"],
    "```",
    "",
  ]
  md_path = os.path.join(out_dir, "best.md")
  with open(md_path, "w") as f:
    f.write("\n".join(lines))
  return csv_path, md_path


def distinct_graphs(study: optuna.Study) -> dict[str, int]:
  """{'distinct': graphs trained, 'reused': finished trials that reused a twin's result}.

  A random search draws graphs with replacement: with table2's 3 methods x 2^9 gate
  choices, 1,500 draws hold about 958 distinct graphs (expected value)."""
  finished = study.get_trials(deepcopy=False, states=study_lib.FINISHED)
  reused = sum("duplicate_of" in t.user_attrs for t in finished)
  distinct = {
    tuple(sorted(t.params.items())) for t in finished if "duplicate_of" not in t.user_attrs
  }
  return {"distinct": len(distinct), "reused": reused}


def parse_graph(gates_d: str, gates_transfer: str) -> nx.DiGraph:
  """The graph of one trial: edges D -> G_i and G_t -> G_s with a 'gate' attribute (the
  gates' text read by `core.graph`'s parsers, the one reading of that form)."""
  k = len(gates_d.split(",")) if gates_d.strip() else len(gates_transfer.split(";"))
  d_ids = graph_lib.parse_gates_d(gates_d, k)
  t_ids = graph_lib.parse_gates_transfer(gates_transfer, k)
  g = nx.DiGraph()
  g.add_node("D")
  for i in range(k):
    g.add_node(f"G{i + 1}")
    g.add_edge("D", f"G{i + 1}", gate=gates_lib.GATE_NAMES[int(d_ids[i])])
  for t in range(k):
    for s in range(k):
      if t != s:
        g.add_edge(f"G{t + 1}", f"G{s + 1}", gate=gates_lib.GATE_NAMES[int(t_ids[t, s])])
  return g


def draw_graph(gates_d: str, gates_transfer: str, path: str, title: str) -> str:
  graph = parse_graph(gates_d, gates_transfer)
  k = len(gates_d.split(","))
  pos = {"D": np.array([0.0, 1.0])}
  for i in range(k):
    angle = np.pi * (1.15 + 0.7 * (i / max(k - 1, 1))) if k > 1 else 1.5 * np.pi
    pos[f"G{i + 1}"] = np.array([1.1 * np.cos(angle), 0.35 + 1.1 * np.sin(angle)])
  fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
  nx.draw_networkx_nodes(
    graph, pos, ax=ax, nodelist=["D"], node_color="#f4cccc", node_size=1500, edgecolors="black"
  )
  gens = [n for n in graph if n != "D"]
  nx.draw_networkx_nodes(
    graph, pos, ax=ax, nodelist=gens, node_color="#cfe2f3", node_size=1500, edgecolors="black"
  )
  nx.draw_networkx_labels(
    graph, pos, ax=ax, labels={n: n if n == "D" else f"G$_{n[1:]}$" for n in graph}, font_size=14
  )
  for u, v, data in graph.edges(data=True):
    colour, style, _ = GATE_STYLE[data["gate"]]
    nx.draw_networkx_edges(
      graph,
      pos,
      ax=ax,
      edgelist=[(u, v)],
      edge_color=colour,
      style=style,
      width=2.2,
      arrows=True,
      arrowsize=22,
      node_size=1500,
      connectionstyle="arc3,rad=0.18" if u != "D" else "arc3,rad=0.0",
    )
  handles = [
    Line2D([0], [0], color=c, linestyle=s, lw=2.2, label=label)
    for c, s, label in GATE_STYLE.values()
  ]
  ax.legend(
    handles=handles,
    loc="lower center",
    bbox_to_anchor=(0.5, -0.16),
    ncol=2,
    frameon=False,
    fontsize=9,
  )
  ax.set_title(title, fontsize=10)
  ax.set_axis_off()
  ax.margins(0.15)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def draw_figure7(study: optuna.Study, path: str, compare=()) -> str:
  """A box per transfer method over the finished trials of `study` and of the studies in
  `compare` (which must share its objective); duplicates of a graph count once."""
  space = study.user_attrs.get("space", {})
  objective = _label(space.get("objective", "objective"))
  for other in compare:
    theirs = _label(other.user_attrs.get("space", {}).get("objective", "objective"))
    if theirs != objective:
      raise ValueError(
        f"--compare: study {other.study_name!r} ranks by {theirs}, this one by {objective}"
      )
  groups: dict[str, list[float]] = {}
  for s in (study, *compare):
    for t in s.get_trials(deepcopy=False, states=study_lib.FINISHED):
      if t.value is not None and "duplicate_of" not in t.user_attrs:
        groups.setdefault(t.user_attrs.get("transfer", "?"), []).append(float(t.value))
  if not groups:
    raise ValueError("the study has no finished trial with a value yet")
  names = sorted(groups)
  weights = next(
    (
      t.user_attrs["best"].get("weights", "")
      for t in study.get_trials(deepcopy=False)
      if "best" in t.user_attrs
    ),
    "",
  )
  fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(names)), 4.4), dpi=100)
  ax.boxplot([groups[n] for n in names], showmeans=True)
  ax.set_xticks(range(1, len(names) + 1), [f"{n}\n({len(groups[n])} trials)" for n in names])
  for i, n in enumerate(names, 1):
    xs = np.random.default_rng(i).uniform(-0.08, 0.08, len(groups[n])) + i
    ax.scatter(xs, groups[n], s=10, alpha=0.5, color="tab:blue")
  rule = "last" if space.get("select") == "last" else "best"
  ax.set_ylabel(f"{objective} of the trial's {rule} evaluation")
  ax.set_xlabel("transfer method")
  title = (
    f"{objective} per trial by transfer method: {space.get('eval_samples')} samples per "
    f"generator, {space.get('num_epochs')} epochs per trial; {weights}"
  )
  ax.set_title(textwrap.fill(title, 70), fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def write_report(study: optuna.Study, out_dir: str, top: int = 10, compare=()) -> list[str]:
  """Writes best.csv, best.md, graph_best.png and figure7.png into `out_dir`; figure7.png
  also draws the trials of the studies in `compare`."""
  os.makedirs(out_dir, exist_ok=True)
  csv_path, md_path = write_tables(study, out_dir, top)
  best = study_lib.best_trials(study, 1)[0]
  space = study.user_attrs.get("space", {})
  title = (
    f"Best graph: trial {best.number}, {_label(space.get('objective', ''))} {best.value:.3f}\n"
    f"transfer: {best.user_attrs.get('transfer', '')}"
  )
  graph = draw_graph(
    best.user_attrs["gates_d"],
    best.user_attrs["gates_transfer"],
    os.path.join(out_dir, "graph_best.png"),
    title,
  )
  fig7 = draw_figure7(study, os.path.join(out_dir, "figure7.png"), compare)
  return [csv_path, md_path, graph, fig7]
