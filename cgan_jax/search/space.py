"""The search space: one gate per edge of the knowledge transfer graph (and optionally the
transfer method), and the trial config it gives.

Edges (section 3.2): the k adversarial edges D -> G_i (gate of L_D,i, `config.graph.gates_d`)
and the k(k - 1) transfer edges G_t -> G_s, t != s (gate of L_t,s, row t = teacher of
`config.graph.gates_transfer`). Parameter names: `gate_d_<i>` and `gate_t<t>_s<s>`
(0-based, as in the gate arrays), and `transfer`.
"""

import copy

import ml_collections
import numpy as np

from cgan_jax import configlib
from cgan_jax.core import gates as gates_lib
from cgan_jax.core import graph as graph_lib
from cgan_jax.errors import ConfigError, choice_error


def objectives() -> dict[str, str]:
  """{metric: 'maximize'|'minimize'}: every metric of the registry can be the objective."""
  from cgan_jax.quality import registry

  return {name: m.optuna_direction for name, m in registry.METRICS.items()}


SAMPLERS = ("random", "tpe")
PRUNERS = ("none", "successive_halving", "hyperband")
SELECTS = ("best", "last")


def names(text: str) -> list[str]:
  return [n.strip() for n in str(text).split(",") if n.strip()]


def validate(config) -> None:
  """Checks `config.search` (and the run fields it sets) with one-line errors."""
  s = config.get("search")
  if s is None:
    raise ConfigError("config.search is missing; use configs/search.py")
  for field in ("num_trials", "num_epochs", "eval_samples", "eval_every_epochs", "population"):
    value = s[field]
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"config.search.{field}={value!r} must be an integer >= 1")
  if s.eval_samples < 10:
    raise ConfigError(f"config.search.eval_samples={s.eval_samples} must be >= 10")
  gates = names(s.gates)
  if not gates:
    raise ConfigError(
      "config.search.gates is empty; give gates from " + ", ".join(gates_lib.GATE_NAMES)
    )
  for g in gates:
    if g not in gates_lib.GATE_NAMES:
      raise choice_error("config.search.gates", g, gates_lib.GATE_NAMES)
  methods = tuple(m for m in graph_lib.transfer_methods() if m != "none")
  for t in names(s.transfer_methods):
    if t not in methods:
      raise choice_error("config.search.transfer_methods", t, methods)
  if s.select not in SELECTS:
    raise choice_error("config.search.select", s.select, SELECTS)
  if s.objective not in objectives():
    raise choice_error("config.search.objective", s.objective, tuple(objectives()))
  if s.sampler not in SAMPLERS:
    raise choice_error("config.search.sampler", s.sampler, SAMPLERS)
  if s.pruner not in PRUNERS:
    raise choice_error("config.search.pruner", s.pruner, PRUNERS)
  k = config.model.k
  if not isinstance(s.generator, int) or not 0 <= s.generator <= k:
    raise ConfigError(
      f"config.search.generator={s.generator!r} must be 0 (the best generator) or 1..{k} (G_i)"
    )
  if k < 2 and config.graph.transfer != "none":
    raise ConfigError("config.model.k must be >= 2 for a knowledge-transfer-graph search")
  for field in ("heartbeat_s", "grace_s", "max_retry"):
    if not isinstance(s[field], int) or s[field] < (0 if field == "max_retry" else 1):
      raise ConfigError(f"config.search.{field}={s[field]!r} must be a positive integer")
  if s.grace_s <= s.heartbeat_s:
    raise ConfigError(
      f"config.search.grace_s={s.grace_s} must be larger than heartbeat_s={s.heartbeat_s}"
    )
  configlib.validate_config(trial_config(config, {}))
  for t in names(s.transfer_methods):
    configlib.validate_config(trial_config(config, {"transfer": t}))


def edges(k: int) -> tuple[list[str], list[tuple[int, int]]]:
  """The parameter names of the D edges and the (teacher, student) transfer edges."""
  return [f"gate_d_{i}" for i in range(k)], [(t, s) for t in range(k) for s in range(k) if t != s]


def edge_name(t: int, s: int) -> str:
  return f"gate_t{t}_s{s}"


def suggest(trial, config) -> dict:
  """Samples one graph: {'gate_d_i': gate, 'gate_t<t>_s<s>': gate, ['transfer': method]}."""
  s = config.search
  gates = names(s.gates)
  d_names, t_edges = edges(config.model.k)
  params = {n: trial.suggest_categorical(n, gates) for n in d_names}
  methods = names(s.transfer_methods)
  if methods:
    params["transfer"] = trial.suggest_categorical("transfer", methods)
  for t, st in t_edges:
    params[edge_name(t, st)] = trial.suggest_categorical(edge_name(t, st), gates)
  return params


def graph_text(params: dict, k: int) -> tuple[str, str]:
  """(gates_d, gates_transfer) in the text form `--config.graph.gates_*` accept, written by
  `core.graph`'s writers (the one writing of that form)."""
  d_names, _ = edges(k)
  ids = gates_lib.GATE_NAMES.index
  d_ids = np.array([ids(params[n]) for n in d_names], np.int32)
  t_ids = np.full((k, k), gates_lib.CUTOFF, np.int32)
  for t in range(k):
    for s in range(k):
      if t != s:
        t_ids[t, s] = ids(params[edge_name(t, s)])
  return graph_lib.format_gates_d(d_ids), graph_lib.format_gates_transfer(t_ids)


def trial_config(config, params: dict) -> ml_collections.ConfigDict:
  """The run config of one trial: the base config with the graph and the search's budget."""
  s = config.search
  c = copy.deepcopy(config)
  with c.unlocked():
    del c["search"]
  c.num_epochs = s.num_epochs
  c.eval.num_samples = s.eval_samples
  c.eval.final_num_samples = s.eval_samples
  c.eval.every_epochs = s.eval_every_epochs
  c.eval.select = f"{s.objective}:{_metric(s.objective).direction}"
  # The objective is computed at every evaluation, beside the config's other metrics.
  chosen = [n for n in configlib.eval_metrics(c).split(",") if n.strip() not in ("", "auto")]
  c.eval.metrics = ",".join(dict.fromkeys(["auto", *chosen, s.objective]))
  # A killed trial resumes from its last evaluation; only the newest checkpoint is needed.
  c.checkpoint.every_epochs = s.eval_every_epochs
  c.checkpoint.keep = 1
  if "transfer" in params:
    c.graph.transfer = params["transfer"]
  if any(name != "transfer" for name in params):  # {} or {'transfer': m}: the base gates
    c.graph.gates_d, c.graph.gates_transfer = graph_text(params, config.model.k)
  return c


def objective_value(record: dict, objective: str, generator: int) -> float:
  """The objective of one evaluation: its best generator's (generator 0) or G_i's metric."""
  values = [g[objective] for g in record["generators"]]
  if generator:
    return values[generator - 1]
  return _metric(objective).best(values)


def chosen_record(records: list[dict], search) -> dict | None:
  """The evaluation that is a trial's result: its best ('best') or its last ('last', the
  end of learning) by config.search.select."""
  if search.select == "last":
    scored = [r for r in records if all(search.objective in g for g in r["generators"])]
    return scored[-1] if scored else None
  return best_record(records, search.objective, search.generator)


def best_record(records: list[dict], objective: str, generator: int) -> dict | None:
  """The evaluation with the best objective (the paper's "highest point of IS")."""
  scored = [r for r in records if all(objective in g for g in r["generators"])]
  if not scored:
    return None
  key = lambda r: objective_value(r, objective, generator)  # noqa: E731
  return max(scored, key=key) if _metric(objective).direction == "max" else min(scored, key=key)


def _metric(name: str):
  from cgan_jax.quality import registry

  return registry.get(name, "config.search.objective")


def retrain_command(
  config_spec: str, overrides: list[str], params: dict, k: int, epochs: int
) -> str:
  """The `python -m cgan_jax.main` command that re-trains one graph with the full evaluation."""
  gates_d, gates_transfer = graph_text(params, k)
  parts = ["python -m cgan_jax.main", f"--config={config_spec}", *overrides]
  if "transfer" in params:
    parts.append(f"--config.graph.transfer={params['transfer']}")
  parts += [
    f"--config.graph.gates_d='{gates_d}'",
    f"--config.graph.gates_transfer='{gates_transfer}'",
    f"--config.num_epochs={epochs}",
    "--workdir=workdirs/best_graph",
  ]
  return " ".join(parts)
