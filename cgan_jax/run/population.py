"""Populations: P runs of one structure advanced together by one compiled step.

A small DCGAN step is a chain of small kernels; on a GPU it waits on latency, not on
arithmetic (0.4% of an H200 at batch 256, benchmarks/README.md). P runs whose configs
differ only in traced inputs (seed, gates, alpha, learning rates, EMA decay) stack their
states on a leading member axis, and one jitted step advances them all: each kernel P times
larger for about the latency of one.

    configs = population.member_configs(config)             # from config.population.seeds
    results = population.train_population(configs, workdirs)   # one RunResult per member

What a member is:
  * its state is its solo run's `GANState` (k generators, D, optimizer states, SN vectors,
    BatchNorm statistics, loop key), stacked on axis 0 of every leaf: [P, ...];
  * its traced hyperparameters (`steps.StepHparams`) are stacked the same way, so its
    gates, alpha, learning rates and gate schedule are its own;
  * its data: batch t of epoch e is the solo run's, `epoch_permutation(N, seed, e)`
    sliced at t. The training images live on the device as uint8 and each step gathers
    the P batches there from a [P, b] index array (a few KB a step from the host);
  * its keys are its own (the state's loop key, from its seed), so it is the same run as
    its solo twin `--config.seed=s`, equal to float tolerance, and its workdir is a normal
    run workdir: checkpoints, scores.jsonl, sample grids, config.json, TensorBoard files
    that `sample`, `evaluate`, `analyze` and a solo resume accept.

How the members are mapped (`config.population.member_map`, `configlib.population_member_map`):
'vmap' (`jax.vmap` over the stacked member axis: one kernel per operation for all members),
'unroll' (a Python loop over the stacked members inside the one jitted step) or
'sequential' (the solo step once per member, its states kept apart: P times one member's
cost, never more). 'auto' takes vmap where it was measured faster (an accelerator, with
config.model.conv_impl='matmul', whose convolutions are batched matmuls under vmap), else
sequential. Same numbers every way up to float rounding.

Before anything is trained the step is compiled ahead of time for the population's shapes
and XLA's memory analysis says what it needs; if that exceeds the device's memory the run
stops with one `error:` line that says how many members fit (`check_fits`).
"""

import copy
import dataclasses
import json
import os
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from cgan_jax import configlib
from cgan_jax.core import steps
from cgan_jax.errors import ConfigError
from cgan_jax.run import builder, checkpointing, generate, input_pipeline, parallel, train, writers
from cgan_jax.run import evaluation as evaluator_lib
from cgan_jax.run import scores as scores_lib

# Fields in which the members of one population may differ: traced step inputs (gates,
# alpha, learning rates, EMA decay, the gate schedule's unit) and the seed (the state's
# keys and the data order). Everything else must be equal: it fixes the compiled step
# (`builder.structure_key`) or the loop all members share (epochs, data, evaluation).
MEMBER_FIELDS = (
  "seed",
  "graph.gates_d",
  "graph.gates_transfer",
  "graph.alpha",
  "graph.progress",
  "optim.g_lr",
  "optim.d_lr",
  "model.ema_decay",
  "population",
)
POPULATION_FILE = "population.json"


# ---------------------------------------------------------------------------------------
# Configs.


def member_configs(config) -> list[ml_collections.ConfigDict]:
  """One config per seed of config.population.seeds (each a solo run's config: its seed set,
  its population.seeds empty)."""
  seeds = configlib.population_seeds(config)
  out = []
  for seed in seeds:
    c = copy.deepcopy(config)
    c.seed = seed
    if c.get("population") is not None:
      c.population.seeds = ""
    out.append(c)
  return out


def member_workdirs(workdir: str, configs) -> list[str]:
  """DIR/seed<s> for each member."""
  return [os.path.join(workdir, f"seed{c.seed}") for c in configs]


def _flat(config) -> dict:
  out = {}

  def walk(prefix, node):
    for key in sorted(node.keys()):
      value = node[key]
      name = f"{prefix}{key}"
      if name in MEMBER_FIELDS:
        continue
      if isinstance(value, ml_collections.ConfigDict | dict):
        walk(name + ".", value)
      else:
        out[name] = value

  walk("", config)
  return out


def check_members(configs) -> None:
  """Validates every member's config and that they may share one population.

  Raises:
    ConfigError: a bad field, no members, or two members that differ outside
      `MEMBER_FIELDS` (naming the field and both values).
  """
  if not configs:
    raise ConfigError("a population needs at least one member (config.population.seeds)")
  for c in configs:
    configlib.validate_config(c)
  if len({float(c.model.ema_decay) > 0 for c in configs}) > 1:
    raise ConfigError(
      "config.model.ema_decay: members of a population must all keep an EMA (> 0) or none (0)"
    )
  first = _flat(configs[0])
  for i, c in enumerate(configs[1:], 1):
    flat = _flat(c)
    for name in sorted(set(first) | set(flat)):
      if first.get(name) != flat.get(name):
        raise ConfigError(
          f"config.{name}: population member {i} has {flat.get(name)!r} but member 0 has "
          f"{first.get(name)!r}; members may differ only in: {', '.join(MEMBER_FIELDS[:-1])}"
        )


# ---------------------------------------------------------------------------------------
# The compiled population step.


def _prepend_member_axis(sharding: NamedSharding) -> NamedSharding:
  return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))


def stack(trees):
  """[tree_0, ..., tree_{P-1}] -> one tree with leaves [P, ...]."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, m: int):
  """Member m's slice of a tree with leaves [P, ...]."""
  return jax.tree.map(lambda a: a[m], tree)


@dataclasses.dataclass(frozen=True, eq=False)
class PopulationProgram:
  """The compiled step of P members of one structure.

  Attributes:
    solo: the members' `builder.Program` (modules, mesh, sampling, init).
    size: P.
    member_map: 'vmap', 'unroll' (one jitted step for all members, states stacked
      [P, ...]) or 'sequential' (the solo step once per member, states a list).
    shared_images: whether all members train on one image array ([N, h, w, 3]) or each
      on its own (synthetic data, which depends on the seed).
    step: jitted step(states, images, index, hparams) -> (states, metrics), the states
      donated: for the stacked maps over [P, ...] inputs (index [P, b]), metrics with a
      leading P axis; for 'sequential' the solo step of one member (index [b]).
    traces: how many times `step` was traced.
  """

  solo: builder.Program
  size: int
  member_map: str
  shared_images: bool
  step: Any
  traces: dict

  @property
  def stacked(self) -> bool:
    return self.member_map != "sequential"

  @property
  def state_shardings(self):
    if not self.stacked:
      return self.solo.state_shardings
    return jax.tree.map(_prepend_member_axis, self.solo.state_shardings)

  @property
  def index_sharding(self) -> NamedSharding:
    spec = PartitionSpec(None, parallel.DATA) if self.stacked else PartitionSpec(parallel.DATA)
    return NamedSharding(self.solo.mesh, spec)

  def put_states(self, member_states):
    """The members' states (a list) as the step takes them, on the devices."""
    if not self.stacked:
      return [jax.device_put(s, self.solo.state_shardings) for s in member_states]
    return jax.device_put(stack(member_states), self.state_shardings)

  def put_hparams(self, member_hparams):
    rep = self.solo.replicated
    if not self.stacked:
      return [jax.device_put(h, rep) for h in member_hparams]
    return jax.device_put(stack(member_hparams), rep)

  def put_images(self, images):
    """One uint8 [N, h, w, 3] array (shared) or one per member."""
    rep = self.solo.replicated
    if self.shared_images:
      return jax.device_put(images[0], rep)
    if not self.stacked:
      return [jax.device_put(x, rep) for x in images]
    return jax.device_put(np.stack(images), rep)

  def put_index(self, local_index: np.ndarray, batch_size: int):
    """int32 [P, local batch] (this process's slice of every member's batch)."""
    if not self.stacked:
      return [
        jax.make_array_from_process_local_data(self.index_sharding, row, (batch_size,))
        for row in local_index
      ]
    return jax.make_array_from_process_local_data(
      self.index_sharding, local_index, (self.size, batch_size)
    )

  def member_state(self, states, m: int):
    return member(states, m) if self.stacked else states[m]

  def metrics_by_member(self, fetched) -> dict:
    """Host metrics of one step as {name: [P, ...]} (a list of dicts when sequential)."""
    if isinstance(fetched, dict):
      return fetched
    return {name: np.stack([f[name] for f in fetched]) for name in fetched[0]}

  def abstract_inputs(self, config, num_images: int):
    """ShapeDtypeStructs of `step`'s inputs (for `compile_step`, before any allocation)."""

    def sds(tree, shardings):
      return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
      )

    lead = (self.size,) if self.stacked else ()
    one = builder.abstract_state(config)
    states = jax.tree.map(lambda a: jax.ShapeDtypeStruct((*lead, *a.shape), a.dtype), one)
    image_lead = () if self.shared_images else lead
    images = jax.ShapeDtypeStruct(
      (*image_lead, num_images, 32, 32, 3), jnp.uint8, sharding=self.solo.replicated
    )
    index = jax.ShapeDtypeStruct(
      (*lead, config.train.batch_size), jnp.int32, sharding=self.index_sharding
    )
    hp = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(
        (*lead, *np.shape(a)), np.asarray(a).dtype, sharding=self.solo.replicated
      ),
      builder.step_hparams(config, 1),
    )
    return (sds(states, self.state_shardings), images, index, hp)


_PROGRAMS: dict[tuple, PopulationProgram] = {}
_LOCK = threading.Lock()


def build(config, size: int, *, shared_images: bool = True, mesh=None) -> PopulationProgram:
  """The `PopulationProgram` of P = `size` members of `config`'s structure (cached)."""
  solo = builder.build(config, mesh)
  how = configlib.population_member_map(config)
  key = (solo.key, size, how, shared_images)
  with _LOCK:
    if key in _PROGRAMS:
      return _PROGRAMS[key]
    pure = steps.make_train_step(solo.spec)
    image_size = config.data.image_size
    traces: dict[str, int] = {}

    def one(state, images, index, hparams):
      raw = jnp.take(images, index, axis=0)  # uint8 [b, h, w, 3]: the solo run's batch
      return pure(state, input_pipeline.preprocess(raw, image_size), hparams)

    image_axis = None if shared_images else 0

    def population_step(states, images, index, hparams):
      traces["step"] = traces.get("step", 0) + 1  # runs only while tracing
      if how == "sequential":
        return one(states, images, index, hparams)
      if how == "vmap":
        return jax.vmap(one, in_axes=(0, image_axis, 0, 0))(states, images, index, hparams)
      outs = [
        one(member(states, m), images if shared_images else images[m], index[m], member(hparams, m))
        for m in range(size)
      ]
      return stack([o[0] for o in outs]), stack([o[1] for o in outs])

    shardings = solo.state_shardings
    if how != "sequential":
      shardings = jax.tree.map(_prepend_member_axis, shardings)
    program = PopulationProgram(
      solo=solo,
      size=size,
      member_map=how,
      shared_images=shared_images,
      step=parallel.shard_step(population_step, shardings),
      traces=traces,
    )
    _PROGRAMS[key] = program
    return program


def clear_programs() -> None:
  with _LOCK:
    _PROGRAMS.clear()


def device_memory_bytes(device=None) -> tuple[int, str]:
  """(bytes the device can hold, its description): the allocator's limit on accelerators,
  the machine's physical memory on the CPU."""
  device = device or jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - not every backend has them
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), device.device_kind
  pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
  return int(pages * size), f"{device.device_kind} (host memory)"


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """XLA's memory analysis of the compiled population step.

  Attributes:
    state_bytes: the states (P members), inputs and outputs alias (donated).
    other_input_bytes: images, index and hparams.
    temp_bytes: activations and other temporaries of one step.
    total_bytes: what the step needs at once.
    limit_bytes: what the device holds (`device_memory_bytes` or the config's limit).
    device: the device's description.
    flops: XLA's cost analysis of the step before the backend's passes (all P members).
  """

  state_bytes: int
  other_input_bytes: int
  temp_bytes: int
  total_bytes: int
  limit_bytes: int
  device: str
  flops: float = float("nan")

  def members_that_fit(self, size: int) -> int:
    per_member = (self.state_bytes + self.temp_bytes) / size
    room = 0.9 * self.limit_bytes - self.other_input_bytes
    return max(int(room // per_member), 0)


def _nbytes(tree) -> int:
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def compile_step(program: PopulationProgram, config, num_images: int):
  """The population step compiled ahead of time, and its memory needs.

  Returns:
    (run, estimate): run(states, images, index, hparams) -> (states, metrics) advances
    every member by one step (metrics: {name: [P, ...]} for the stacked maps, a list of
    per-member dicts for 'sequential'); estimate: a `MemoryEstimate`.
  """
  args = program.abstract_inputs(config, num_images)
  lowered = program.step.lower(*args)
  cost = lowered.cost_analysis()  # of the HLO before XLA's backend passes
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  compiled = lowered.compile()
  analysis = compiled.memory_analysis()
  state_bytes, total_args = _nbytes(args[0]), _nbytes(args)
  temp = int(getattr(analysis, "temp_size_in_bytes", 0) or 0) if analysis is not None else 0
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  if not np.isfinite(flops):  # not every backend analyses the unoptimised HLO (the GPU's)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  run = compiled
  if not program.stacked:  # one member's step, run P times; P states held at once
    size = program.size
    per_member = _nbytes(args[0]) + _nbytes(args[2:])  # state, index, hparams
    if not program.shared_images:
      per_member += _nbytes(args[1])
    total_args += (size - 1) * per_member
    state_bytes *= size
    flops *= size

    def run(states, images, index, hparams):
      outs = [
        compiled(states[m], images if program.shared_images else images[m], index[m], hparams[m])
        for m in range(size)
      ]
      return [o[0] for o in outs], [o[1] for o in outs]

  gb = float(configlib.population_field(config, "memory_limit_gb", 0.0) or 0.0)
  limit, device = device_memory_bytes(program.solo.mesh.devices.flat[0])
  if gb > 0:
    limit, device = int(gb * 2**30), f"{device}, config.population.memory_limit_gb={gb:g}"
  estimate = MemoryEstimate(
    state_bytes=state_bytes,
    other_input_bytes=total_args - state_bytes,
    temp_bytes=temp,
    total_bytes=total_args + temp,
    limit_bytes=limit,
    device=device,
    flops=flops,
  )
  return run, estimate


def check_fits(estimate: MemoryEstimate, size: int) -> None:
  """Raises ConfigError (one line, with the P that fits) when the step cannot fit."""
  if estimate.total_bytes <= 0.9 * estimate.limit_bytes:
    return
  fits = estimate.members_that_fit(size)
  raise ConfigError(
    f"config.population: {size} members need about {estimate.total_bytes / 2**30:.2f} GiB "
    f"(states {estimate.state_bytes / 2**30:.2f}, activations {estimate.temp_bytes / 2**30:.2f})"
    f" but {estimate.device} holds {estimate.limit_bytes / 2**30:.2f} GiB; at most {fits} "
    f"member(s) fit: use fewer seeds, or a smaller batch"
  )


# ---------------------------------------------------------------------------------------
# Training a population.


@dataclasses.dataclass
class _Member:
  """The host-side part of one member: its workdir and what writes there."""

  config: Any
  workdir: str
  manager: Any = None
  best_manager: Any = None
  writer: Any = None
  evaluator: Any = None
  images: Any = None
  eval_key: Any = None
  grid_z: Any = None
  last_good: int | None = None
  # Why this member stopped before the population: 'callback' (a callback asked, e.g. a
  # search pruned its trial) or 'diverged' (on_diverge='drop'); None while it trains.
  stopped: str | None = None
  stopped_at: int | None = None
  diverged: str = ""


def _check_finite(program, history, step: int, members, on_diverge: str = "raise") -> None:
  """Raises `TrainingDiverged` for the first member with a non-finite loss, or with
  on_diverge='drop' marks it stopped ('diverged') and lets the others go on."""
  if not history:
    return
  fetched = [program.metrics_by_member(h) for h in jax.device_get(history)]
  for i, metrics in enumerate(fetched):
    for m, mem in enumerate(members):
      if mem.stopped is not None:
        continue
      bad = [n for n in ("d_loss", "g_loss") if not np.all(np.isfinite(metrics[n][m]))]
      if bad:
        where = (
          f"its last good checkpoint (step {mem.last_good}) is kept"
          if mem.last_good is not None
          else "no checkpoint was written"
        )
        message = (
          f"population member {m} ({mem.workdir}): non-finite {', '.join(bad)} at step "
          f"{step - len(fetched) + i + 1}; "
        )
        if on_diverge == "raise":
          raise train.TrainingDiverged(message + f"stopping all members; {where}")
        mem.stopped, mem.stopped_at = "diverged", step
        mem.diverged = message + where
        logging.warning("%s; the other members go on.", mem.diverged)


def _log(program, history, step: int, members) -> None:
  if not history:
    return
  fetched = [program.metrics_by_member(h) for h in jax.device_get(history)]
  mean = {name: np.mean([h[name] for h in fetched], axis=0) for name in fetched[0]}
  for m, mem in enumerate(members):
    mem.writer.write_scalars(step, train._flatten_metrics({n: v[m] for n, v in mean.items()}))


def _restore(members, states_list):
  """Restores every member at the newest step all of them have; None when none has one.

  Raises:
    ConfigError: some members have checkpoints and others none, or no common step.
  """
  restored = [
    checkpointing.restore_latest(mem.manager, s, mem.workdir)
    for mem, s in zip(members, states_list, strict=True)
  ]
  have = [r is not None for r in restored]
  if not any(have):
    return None
  if not all(have):
    where = ", ".join(
      f"{mem.workdir}: {'step ' + str(r[1]) if r else 'none'}"
      for mem, r in zip(members, restored, strict=True)
    )
    raise ConfigError(
      f"the population's workdirs are at different points ({where}); train the new members "
      "in a workdir of their own, or resume the old ones without them"
    )
  step = min(r[1] for r in restored)
  out = []
  for mem, s, r in zip(members, states_list, restored, strict=True):
    if r[1] == step:
      out.append(r[0])
      continue
    if step not in mem.manager.all_steps():
      raise ConfigError(
        f"{mem.workdir} has no checkpoint at step {step}, where the other members are; "
        "resume its members separately"
      )
    logging.warning("%s: resuming from step %d, the population's common step.", mem.workdir, step)
    out.append(checkpointing.restore_at(mem.manager, step, s))
  return out, step


def train_population(
  configs, workdirs, callbacks=(), root=None, on_diverge: str = "raise"
) -> list[train.RunResult]:
  """Trains (or resumes) P runs as one population; member m's run lives in workdirs[m].

  Args:
    configs: one config per member (`member_configs`); see `check_members`.
    workdirs: one workdir per member.
    callbacks: called as callback(m, record) after member m's evaluation; True stops
      member m (a search pruned its trial): from then on it is neither evaluated nor
      checkpointed, and its result says 'callback'. Its slot still computes (a member
      axis of fixed size); the population ends early once every member has stopped.
    root: where to write `population.json` (the CLI's --workdir), or None.
    on_diverge: 'raise' (a member's non-finite loss stops all members with
      `TrainingDiverged`) or 'drop' (that member stops: its result's `stopped` is
      'diverged' and its `detail` says where; the others go on).

  Returns:
    One `train.RunResult` per member.

  Raises:
    ConfigError: before anything is written; TrainingDiverged: a member's loss became
      non-finite (every member's last good checkpoint stays).
  """
  if on_diverge not in ("raise", "drop"):
    raise ValueError(f"on_diverge={on_diverge!r}; allowed: 'raise', 'drop'")
  check_members(configs)
  if len(workdirs) != len(configs) or len(set(map(os.path.abspath, workdirs))) != len(workdirs):
    raise ConfigError("a population needs one distinct workdir per member")
  size = len(configs)
  config = configs[0]
  for c, wd in zip(configs, workdirs, strict=True):
    train.check_workdir(wd, c)

  shared = config.data.source != "synthetic" or len({c.seed for c in configs}) == 1
  member_images = [input_pipeline.load_images(c) for c in (configs[:1] if shared else configs)]
  num_images = len(member_images[0])
  program = build(config, size, shared_images=shared)
  logging.info(
    "Population of %d members (%s); compiling its step (member_map=%s)...",
    size,
    ", ".join(f"seed {c.seed}" for c in configs),
    program.member_map,
  )
  compiled, estimate = compile_step(program, config, num_images)
  check_fits(estimate, size)
  logging.info(
    "The step needs about %.2f GiB (%d members: states %.2f, activations %.2f) of %.2f GiB on %s.",
    estimate.total_bytes / 2**30,
    size,
    estimate.state_bytes / 2**30,
    estimate.temp_bytes / 2**30,
    estimate.limit_bytes / 2**30,
    estimate.device,
  )

  evaluators = [evaluator_lib.make_training_evaluator(config, member_images[0])]
  if not shared:
    evaluators += [
      evaluator_lib.make_training_evaluator(c, im)
      for c, im in zip(configs[1:], member_images[1:], strict=True)
    ]
  spe = input_pipeline.steps_per_epoch(num_images, config.train.batch_size)
  total_steps = spe * config.num_epochs

  members, init_states = [], []
  for m, (c, wd) in enumerate(zip(configs, workdirs, strict=True)):
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(c.seed))
    init_states.append(program.solo.init_state(c, init_key))
    members.append(
      _Member(
        config=c,
        workdir=wd,
        evaluator=evaluators[0 if shared else m],
        images=member_images[0 if shared else m],
        eval_key=eval_key,
        grid_z=generate.latents(jax.random.fold_in(eval_key, 0), c.eval.num_grid, c.model.z_dim),
      )
    )
  if root is not None:
    write_population_file(root, configs, workdirs)
  for mem in members:
    os.makedirs(mem.workdir, exist_ok=True)
    train.write_config(mem.workdir, mem.config)
    mem.manager = checkpointing.make_manager(mem.workdir, mem.config.checkpoint.keep)
    for sub in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
      checkpointing.remove_temporary(os.path.join(mem.workdir, sub))

  restored = _restore(members, init_states)
  step = 0
  pending_eval: set[int] = set()
  if restored is not None:
    init_states, step = restored
    for mem in members:
      mem.last_good = step
    # Checkpoints are saved before the epoch's evaluation: the members a killed process
    # did not evaluate at this step are evaluated first (no training is repeated).
    if step % spe == 0 and (step // spe % config.eval.every_epochs == 0 or step >= total_steps):
      pending_eval = {
        m
        for m, mem in enumerate(members)
        if mem.evaluator is not None
        and not any(r.get("step") == step for r in scores_lib.read(mem.workdir))
      }
    if step >= total_steps and not pending_eval:
      for mem in members:
        mem.manager.close()
      logging.info("The population is already finished (step %d of %d).", step, total_steps)
      return [
        train.RunResult(s, scores_lib.read(mem.workdir), None)
        for mem, s in zip(members, init_states, strict=True)
      ]
    logging.info("Resumed the population from step %d.", step)
  states = program.put_states(init_states)
  del init_states
  images_dev = program.put_images(member_images)
  hparams = program.put_hparams([builder.step_hparams(c, spe) for c in configs])
  for mem in members:
    mem.writer = writers.make_writer(mem.workdir, just_logging=jax.process_index() > 0)
    mem.writer.write_hparams(train._flatten_hparams(mem.config))
    if mem.evaluator is not None:
      mem.best_manager = checkpointing.make_best_manager(mem.workdir, mem.evaluator.selection[1])

  report = writers.make_progress(total_steps, config.train.log_every_steps)
  first_step = step
  history: list[dict] = []
  t_start = time.perf_counter()
  stopped = None
  b = config.train.batch_size
  local = b // jax.process_count()
  offset = jax.process_index() * local

  def save_checkpoints():
    nonlocal history
    _check_finite(program, history, step, members, on_diverge)
    _log(program, history, step, members)
    history = []
    for m, mem in enumerate(members):
      if mem.stopped is None:
        checkpointing.save(mem.manager, step, program.member_state(states, m))
        mem.last_good = step

  def evaluate(only=None) -> bool:
    last = step >= total_steps
    for m, mem in enumerate(members):
      if mem.stopped is not None or (only is not None and m not in only):
        continue
      state = program.member_state(states, m)
      train.write_sample_grids(
        mem.writer, mem.workdir, program.solo.generate, state, mem.grid_z, step, config.model.k
      )
      if mem.evaluator is None:
        continue
      num = config.eval.final_num_samples if last else config.eval.num_samples
      t_eval = time.perf_counter()
      key = jax.random.fold_in(mem.eval_key, 1)
      scores = mem.evaluator.evaluate(
        program.solo.generate, state, key, num, should_stop=lambda: stop.received is not None
      )
      train.log_scores(mem.writer, mem.evaluator, scores, step, num)
      record = mem.evaluator.record(scores, step=step, epoch=step // spe, num_samples=num)
      record.update(
        final=last,
        eval_s=round(time.perf_counter() - t_eval, 2),
        process_s=round(time.perf_counter() - t_start, 2),
        population={"size": size, "member": m},
      )
      if jax.process_index() == 0:
        scores_lib.append(mem.workdir, record)
      train.save_best(mem.best_manager, mem.evaluator, scores, step, state)
      if any([bool(cb(m, record)) for cb in callbacks]) and not last:
        mem.stopped, mem.stopped_at = "callback", step
    return all(mem.stopped is not None for mem in members) and not last

  with train._StopSignal() as stop:
    try:
      if stop.received is not None:  # before anything was trained: nothing to save
        stopped = stop.received
        logging.warning("Received %s before training started: stopping.", stopped)
      elif pending_eval:
        logging.info(
          "Evaluating step %d of member(s) %s, which the previous process did not finish.",
          step,
          ", ".join(str(m) for m in sorted(pending_eval)),
        )
        try:
          if evaluate(pending_eval):
            stopped = "callback"
        except evaluator_lib.EvaluationInterrupted:
          stopped = stop.received
          train._log_interrupted_evaluation(stopped, step)
      while step < total_steps and stopped is None:
        epoch, start = divmod(step, spe)
        orders = [
          input_pipeline.epoch_permutation(len(mem.images), mem.config.seed, epoch)
          for mem in members
        ]
        for t in range(start, spe):
          index = np.stack([o[t * b + offset :][:local] for o in orders]).astype(np.int32)
          index = program.put_index(index, b)
          states, metrics = compiled(states, images_dev, index, hparams)
          step += 1
          history.append(metrics)
          if step == first_step + 1:
            jax.block_until_ready(metrics)
            stop.arm()
          if step % config.train.log_every_steps == 0:
            _check_finite(program, history, step, members, on_diverge)
            if all(mem.stopped is not None for mem in members):
              break
            _log(program, history, step, members)
            history = []
          report(step)
          if stop.received is not None:
            break
        if stop.received is not None:
          stopped = stop.received
          logging.warning("Received %s at step %d: saving checkpoints and exiting.", stopped, step)
          save_checkpoints()
          break
        if all(mem.stopped is not None for mem in members):
          stopped = "callback"
          break
        if step // spe % config.checkpoint.every_epochs == 0 or step >= total_steps:
          save_checkpoints()
        if not (step // spe % config.eval.every_epochs == 0 or step >= total_steps):
          continue
        try:
          wants_stop = evaluate()
        except evaluator_lib.EvaluationInterrupted:
          stopped = stop.received
          train._log_interrupted_evaluation(stopped, step)
          if any(mem.last_good != step for mem in members):
            save_checkpoints()
          break
        if wants_stop:
          stopped = "callback"
    finally:
      for mem in members:
        checkpointing.close(mem.manager)
        checkpointing.close(mem.best_manager)
  results = []
  seconds = time.perf_counter() - t_start
  for m, mem in enumerate(members):
    mem.writer.close()
    records = scores_lib.read(mem.workdir)
    mine = stopped if mem.stopped is None else mem.stopped
    end = step if mem.stopped_at is None else mem.stopped_at
    train._summary(mem.workdir, first_step, end, total_steps, seconds, records, mine)
    results.append(train.RunResult(program.member_state(states, m), records, mine, mem.diverged))
  return results


def write_population_file(workdir: str, configs, workdirs) -> None:
  """DIR/population.json: the members and their workdirs (relative to DIR); process 0 writes it."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    return
  info = {
    "seeds": [int(c.seed) for c in configs],
    "members": [os.path.relpath(w, workdir) for w in workdirs],
  }
  with open(os.path.join(workdir, POPULATION_FILE), "w") as f:
    json.dump(info, f, indent=2)
