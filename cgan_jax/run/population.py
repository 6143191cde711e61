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

Slots and refills: each member keeps its own step (its data order, gate progress,
checkpoints, evaluations and workdir follow it), so members need not be at one step. A
member that stops (a search prunes its trial, or its loss diverges with on_diverge='drop')
is no longer evaluated or checkpointed and its updates are masked (the step's `active`
input: its state stays as it was). With `refill`, a slot whose run ends hands itself to a
new run of the same structure at once: fresh state, its own step 0, while the other
members go on bit for bit as they would have (no kernel mixes members). A resume restores
each member at its own latest checkpoint.

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

# Fields in which the members of one population may differ (`configlib.FIELDS`' `member`):
# traced step inputs (gates, alpha, learning rates, EMA decay, the gate schedule's unit)
# and the seed (the state's keys and the data order). Everything else must be equal: it
# fixes the compiled step (`builder.structure_key`) or the loop all members share (epochs,
# data, evaluation).
MEMBER_FIELDS = configlib.MEMBER_FIELDS
_DIFFERING = [f for f in MEMBER_FIELDS if not f.startswith("population.")]
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
  """The fields that must be equal across members (all but `MEMBER_FIELDS`)."""
  return configlib.flatten(config, skip=MEMBER_FIELDS)


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
          f"{first.get(name)!r}; members may differ only in: {', '.join(_DIFFERING)}"
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
    step: jitted step(states, images, index, hparams, active) -> (states, metrics), the
      states donated: for the stacked maps over [P, ...] inputs (index [P, b], active a bool
      [P] whose False rows keep their state: a stopped member, an empty slot), metrics with
      a leading P axis; for 'sequential' the solo step of one member (index [b]).
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

  def put_active(self, active):
    """The step's mask: a bool [P] on the devices (stacked maps) or a host list."""
    if not self.stacked:
      return [bool(a) for a in active]
    return jax.device_put(np.asarray(active, bool), self.solo.replicated)

  def set_member(self, states, m: int, state):
    """`states` with member m's slot replaced by `state` (a refill); `states` is donated."""
    if not self.stacked:
      states = list(states)
      states[m] = jax.device_put(state, self.solo.state_shardings)
      return states
    out = _set_member(states, jnp.int32(m), state)
    return jax.device_put(out, self.state_shardings)

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
    active = jax.ShapeDtypeStruct(lead, jnp.bool_, sharding=self.solo.replicated)
    return (sds(states, self.state_shardings), images, index, hp, active)


@jax.jit
def _set_member(states, m, state):
  return jax.tree.map(lambda a, s: jax.lax.dynamic_update_index_in_dim(a, s, m, 0), states, state)


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

    def population_step(states, images, index, hparams, active):
      traces["step"] = traces.get("step", 0) + 1  # runs only while tracing
      if how == "sequential":  # the host skips an inactive member's step
        return one(states, images, index, hparams)
      if how == "vmap":
        new, metrics = jax.vmap(one, in_axes=(0, image_axis, 0, 0))(states, images, index, hparams)
      else:
        outs = [
          one(
            member(states, m), images if shared_images else images[m], index[m], member(hparams, m)
          )
          for m in range(size)
        ]
        new, metrics = stack([o[0] for o in outs]), stack([o[1] for o in outs])
      # A stopped member's (or an empty slot's) update is masked: its state stays as it was.
      keep = lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)  # noqa: E731
      return jax.tree.map(keep, new, states), metrics

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
    (run, estimate): run(states, images, index, hparams, active) -> (states, metrics)
    advances every active member by one step (metrics: {name: [P, ...]} for the stacked
    maps, a list of per-member dicts for 'sequential'); estimate: a `MemoryEstimate`.
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
    per_member = _nbytes(args[0]) + _nbytes(args[2:4])  # state, index, hparams
    if not program.shared_images:
      per_member += _nbytes(args[1])
    total_args += (size - 1) * per_member
    state_bytes *= size
    flops *= size

    true = jax.device_put(np.bool_(True), program.solo.replicated)

    def run(states, images, index, hparams, active):
      states, metrics = list(states), [None] * size
      for m in range(size):
        if active[m]:
          im = images if program.shared_images else images[m]
          states[m], metrics[m] = compiled(states[m], im, index[m], hparams[m], true)
      fill = next((x for x in metrics if x is not None), None)
      return states, [fill if x is None else x for x in metrics]  # inactive rows: ignored

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
  """The host-side part of the run in one slot: its workdir, what writes there, its steps."""

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
  # Its own step (its solo run's): members need not be at one step; a refilled slot's run
  # starts at 0 while the others go on. Its data order and gate progress follow it.
  step: int = 0
  first_step: int = 0
  order: Any = None
  order_epoch: int = -1
  # Why this run stopped before its last step: 'callback' (a callback asked, e.g. a search
  # pruned its trial) or 'diverged' (on_diverge='drop'); None while it trains.
  stopped: str | None = None
  stopped_at: int | None = None
  diverged: str = ""
  joined: float = 0.0  # time.perf_counter() when it joined the population
  train_s: float = 0.0  # its share of the population's training seconds
  ended: bool = False  # its result was handed on: the slot is empty (masked)


class _PopulationLoop:
  """The epoch loop of a population whose slots can be refilled (`train_population`).

  Every slot holds one run; each run has its own step, so a run that stops (pruned,
  diverged) or finishes can hand its slot to a fresh run (`refill`) at once while the others
  go on undisturbed: their inputs, hence their numbers, do not depend on the other slots.
  """

  def __init__(
    self, program, compiled, config, spe, callbacks, refill, on_diverge, shared, evaluator0
  ):
    self.program, self.compiled, self.config = program, compiled, config
    self.spe, self.total = spe, spe * config.num_epochs
    self.callbacks, self.refill, self.on_diverge = callbacks, refill, on_diverge
    self.shared = shared
    self.members: list[_Member] = []
    self.states = self.images_dev = self.hparams = None
    self.hparams_list: list = []
    self.results: list = []
    self.history: list = []  # (metrics, active slots) of the steps not yet logged
    self.stop = None
    self.stopped = None
    self.t_start = time.perf_counter()
    self.t_mark, self.eval_total, self.eval_mark = self.t_start, 0.0, 0.0
    self.evaluator0 = evaluator0  # the shared images' evaluator, for refills
    self.report = None  # the progress line (`writers.ProgressLog`), while `run` runs

  # -- slots ------------------------------------------------------------------------------

  def open(self, c, wd, evaluator, images):
    """A `_Member` for config c in wd, and its state (restored from wd if it has one)."""
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(c.seed))
    state = self.program.solo.init_state(c, init_key)
    mem = _Member(
      config=c,
      workdir=wd,
      evaluator=evaluator,
      images=images,
      eval_key=eval_key,
      grid_z=generate.latents(jax.random.fold_in(eval_key, 0), c.eval.num_grid, c.model.z_dim),
      joined=time.perf_counter(),
    )
    os.makedirs(wd, exist_ok=True)
    train.write_config(wd, c)
    mem.manager = checkpointing.make_manager(wd, c.checkpoint.keep)
    for sub in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
      checkpointing.remove_temporary(os.path.join(wd, sub))
    restored = checkpointing.restore_latest(mem.manager, state, wd)
    if restored is not None:
      state, mem.step = restored
      mem.last_good = mem.step
      if evaluator is not None:  # a resume: is the best checkpoint still readable?
        best = checkpointing.make_best_manager(wd, evaluator.selection[1])
        checkpointing.check_best(best, state, wd)
        checkpointing.close(best)
    mem.first_step = mem.step
    return mem, state

  def start_outputs(self, mem) -> None:
    mem.writer = writers.make_writer(mem.workdir, just_logging=jax.process_index() > 0)
    mem.writer.write_hparams(train._flatten_hparams(mem.config))
    if mem.evaluator is not None:
      mem.best_manager = checkpointing.make_best_manager(mem.workdir, mem.evaluator.selection[1])

  def replace(self, m: int, c, wd) -> None:
    """Slot m takes a new run (config c, workdir wd): its fresh (or restored) state, its
    hyperparameters and, for synthetic data of another seed, its images."""
    check_members([self.config, c])
    train.check_workdir(wd, c)
    if self.shared:
      if c.data.source == "synthetic" and c.seed != self.config.seed:
        raise ConfigError(
          f"config.seed: a refill with synthetic data of seed {c.seed} needs its own images, "
          f"but this population shares seed {self.config.seed}'s"
        )
      images, evaluator = self.members[0].images, self.evaluator0
    else:
      images = input_pipeline.load_images(c)
      evaluator = evaluator_lib.make_training_evaluator(c, images)
      if self.program.stacked:
        rows = np.array(jax.device_get(self.images_dev))
        rows[m] = images
        self.images_dev = jax.device_put(rows, self.program.solo.replicated)
      else:
        self.images_dev[m] = jax.device_put(images, self.program.solo.replicated)
    mem, state = self.open(c, wd, evaluator, images)
    self.start_outputs(mem)
    self.states = self.program.set_member(self.states, m, state)
    self.hparams_list[m] = builder.step_hparams(c, self.spe)
    self.hparams = self.program.put_hparams(self.hparams_list)
    self.members[m] = mem
    logging.info("Slot %d: %s joins the population at its step %d.", m, wd, mem.step)
    self.catch_up(m)

  def active(self) -> list[int]:
    return [
      m
      for m, mem in enumerate(self.members)
      if not mem.ended and mem.stopped is None and mem.step < self.total
    ]

  def end(self, m: int, final: bool = False) -> None:
    """Run m ended (finished, stopped or, with `final`, the population ended): its summary
    and result; then, unless final, its slot is refilled (or left empty)."""
    mem = self.members[m]
    if mem.ended:
      return
    mem.ended = True
    checkpointing.close(mem.manager)
    checkpointing.close(mem.best_manager)
    mem.writer.close()
    records = scores_lib.read(mem.workdir)
    mine = self.stopped if mem.stopped is None else mem.stopped
    end = mem.step if mem.stopped_at is None else mem.stopped_at
    seconds = time.perf_counter() - mem.joined
    train._summary(mem.workdir, mem.first_step, end, self.total, seconds, records, mine)
    result = train.RunResult(
      self.program.member_state(self.states, m), records, mine, mem.diverged, mem.train_s
    )
    if final or self.refill is None:
      self.results[m] = result
      return
    self.results[m] = None
    following = self.refill(m, result)
    if following is not None:
      self.replace(m, *following)

  def catch_up(self, m: int) -> None:
    """A run that joined (or resumed) at an epoch boundary whose evaluation a killed process
    did not finish is evaluated first; a finished one ends at once."""
    mem = self.members[m]
    if mem.step > 0 and self.is_eval_boundary(mem.step) and mem.evaluator is not None:
      if not any(r.get("step") == mem.step for r in scores_lib.read(mem.workdir)):
        logging.info(
          "%s: evaluating step %d, which a previous process did not.", mem.workdir, mem.step
        )
        self.evaluate([m])
    if mem.step >= self.total or mem.stopped is not None:
      self.end(m)

  # -- the loop ---------------------------------------------------------------------------

  def is_eval_boundary(self, step: int) -> bool:
    every = self.config.eval.every_epochs
    return step % self.spe == 0 and (step // self.spe % every == 0 or step >= self.total)

  def index(self, active, local: int, offset: int):
    b = self.config.train.batch_size
    rows = np.zeros((len(self.members), local), np.int32)
    for m in active:
      mem = self.members[m]
      epoch, t = divmod(mem.step, self.spe)
      if mem.order_epoch != epoch:
        mem.order = input_pipeline.epoch_permutation(len(mem.images), mem.config.seed, epoch)
        mem.order_epoch = epoch
      rows[m] = mem.order[t * b + offset :][:local]
    return self.program.put_index(rows, b)

  def flush(self) -> list[int]:
    """Checks and logs the steps since the last flush; shares their time among the runs
    that trained. Returns the slots whose run diverged (on_diverge='drop')."""
    now = time.perf_counter()
    window = max(now - self.t_mark - (self.eval_total - self.eval_mark), 0.0)
    self.t_mark, self.eval_mark = now, self.eval_total
    if not self.history:
      return []
    fetched = [self.program.metrics_by_member(h) for h, _ in jax.device_get(self.history)]
    actives = [a for _, a in self.history]
    self.history = []
    per_step = window / len(fetched)
    diverged = []
    for m, mem in enumerate(self.members):
      mine = [i for i, a in enumerate(actives) if m in a]
      if not mine or mem.ended:
        continue
      mem.train_s += sum(per_step / len(actives[i]) for i in mine)
      for i in mine:
        bad = [n for n in ("d_loss", "g_loss") if not np.all(np.isfinite(fetched[i][n][m]))]
        if not bad:
          continue
        at = mem.step - (len(mine) - 1 - mine.index(i))
        where = (
          f"its last good checkpoint (step {mem.last_good}) is kept"
          if mem.last_good is not None
          else "no checkpoint was written"
        )
        message = (
          f"population member {m} ({mem.workdir}): non-finite {', '.join(bad)} at step {at}; "
        )
        if self.on_diverge == "raise":
          raise train.TrainingDiverged(message + f"stopping all members; {where}")
        mem.stopped, mem.stopped_at, mem.diverged = "diverged", mem.step, message + where
        logging.warning("%s; the other members go on.", mem.diverged)
        diverged.append(m)
        break
      mean = {n: np.mean([fetched[i][n][m] for i in mine], axis=0) for n in fetched[0]}
      mem.writer.write_scalars(mem.step, train._flatten_metrics(mean))
    return diverged

  def save(self, m: int) -> None:
    mem = self.members[m]
    checkpointing.save(mem.manager, mem.step, self.program.member_state(self.states, m))
    mem.last_good = mem.step

  def evaluate(self, slots: list[int]) -> None:
    """The sample grids and evaluations of the runs in `slots` at their steps; their
    callbacks may stop them. Runs with the same sample count are scored together: their
    M x k generators share each Inception pass (each against its own run's reference), and
    each run's latents, hence its samples and scores, are those of its solo run."""
    groups: dict[tuple, list[int]] = {}
    for m in slots:
      mem = self.members[m]
      state = self.program.member_state(self.states, m)
      train.write_sample_grids(
        mem.writer,
        mem.workdir,
        self.program.solo.generate,
        state,
        mem.grid_z,
        mem.step,
        self.config.model.k,
      )
      if mem.evaluator is not None:
        last = mem.step >= self.total
        num = self.config.eval.final_num_samples if last else self.config.eval.num_samples
        groups.setdefault(num, []).append(m)
    for num, group in groups.items():
      self._evaluate_group(group, num)

  def _evaluate_group(self, group: list[int], num: int) -> None:
    evaluator = self.members[group[0]].evaluator
    states = [self.program.member_state(self.states, m) for m in group]
    keys = [jax.random.fold_in(self.members[m].eval_key, 1) for m in group]
    t_eval = time.perf_counter()
    stop = self.stop
    try:
      all_scores = evaluator.evaluate_members(
        self.program.solo.generate,
        states,
        keys,
        num,
        should_stop=lambda: stop.received is not None,
        evaluators=[self.members[m].evaluator for m in group],
      )
    finally:
      self.eval_total += time.perf_counter() - t_eval
    eval_s = time.perf_counter() - t_eval
    if self.report is not None:
      self.report.evaluated(eval_s, num * len(group))
    for m, state, scores in zip(group, states, all_scores, strict=True):
      mem = self.members[m]
      step, last = mem.step, mem.step >= self.total
      train.log_scores(mem.writer, mem.evaluator, scores, step, num, eval_s / len(group))
      record = mem.evaluator.record(scores, step=step, epoch=step // self.spe, num_samples=num)
      record.update(
        final=last,
        # The shared evaluation's seconds, split evenly among the runs it scored.
        eval_s=round(eval_s / len(group), 2),
        process_s=round(time.perf_counter() - self.t_start, 2),
        population={"size": len(self.members), "member": m, "evaluated_with": len(group)},
      )
      if jax.process_index() == 0:
        scores_lib.append(mem.workdir, record)
      train.save_best(mem.best_manager, mem.evaluator, scores, step, state)
      if any([bool(cb(m, record)) for cb in self.callbacks]) and not last:
        mem.stopped, mem.stopped_at = "callback", step

  def epoch_end(self, slots: list[int]) -> None:
    """The epoch boundary of the runs in `slots`: every checkpoint first (written while the
    evaluations run, as a solo run's is), then each evaluation, then the runs that ended."""
    slots = [m for m in slots if not self.members[m].ended and self.members[m].stopped is None]
    for m in slots:
      mem = self.members[m]
      if mem.step // self.spe % self.config.checkpoint.every_epochs == 0 or mem.step >= self.total:
        self.save(m)
    self.evaluate([m for m in slots if self.is_eval_boundary(self.members[m].step)])
    for m in slots:
      if self.members[m].step >= self.total or self.members[m].stopped is not None:
        self.end(m)

  def evaluation_plan(self, gstep: int) -> list[tuple[int, int]]:
    """The evaluations still to come, as (population step, samples) for the ETA: each
    training run's, at the population step where it reaches its boundary."""
    due: dict[int, int] = {}
    for mem in self.members:
      if mem.ended or mem.stopped is not None or mem.evaluator is None:
        continue
      for at, num in train.evaluation_plan(mem.config, self.spe):
        if at >= mem.step:
          key = gstep + at - mem.step
          due[key] = due.get(key, 0) + num
    return sorted(due.items())

  def run(self, report) -> None:
    self.report = report
    with train._StopSignal() as stop:
      self.stop = stop
      self.stopped = train.stop_protocol(stop, self._train, self._at, self._save_unsaved)

  def _at(self) -> str:
    steps = sorted({mem.step for mem in self.members if not mem.ended})
    return ", ".join(map(str, steps)) or "-"

  def _save_unsaved(self) -> None:
    self.flush()
    for m in self.active():
      if self.members[m].last_good != self.members[m].step:
        self.save(m)

  def _train(self) -> None:
    """Population steps until every run ended or a signal (returns with it set)."""
    config, stop, report = self.config, self.stop, self.report
    local = config.train.batch_size // jax.process_count()
    offset = jax.process_index() * local
    gstep = 0
    for m in range(len(self.members)):
      self.catch_up(m)
    while stop.received is None:
      active = self.active()
      if not active:
        break
      index = self.index(active, local, offset)
      mask = self.program.put_active([m in active for m in range(len(self.members))])
      self.states, metrics = self.compiled(self.states, self.images_dev, index, self.hparams, mask)
      gstep += 1
      for m in active:
        self.members[m].step += 1
      self.history.append((metrics, tuple(active)))
      if gstep == 1:
        jax.block_until_ready(metrics)
        stop.arm()
      boundary = [m for m in active if self.members[m].step % self.spe == 0]
      if gstep % config.train.log_every_steps == 0 or boundary:
        for m in self.flush():
          self.end(m)
      report.total = gstep + max(
        (self.total - mem.step for mem in self.members if not mem.ended), default=0
      )
      report.plan = self.evaluation_plan(gstep)
      rate = report(gstep)
      if rate is not None:
        for m in active:
          self.members[m].writer.write_scalars(self.members[m].step, {"steps_per_sec": rate})
      if stop.received is not None:
        break
      if boundary:
        self.epoch_end(boundary)


def train_population(
  configs, workdirs, callbacks=(), root=None, on_diverge: str = "raise", refill=None
) -> list[train.RunResult]:
  """Trains (or resumes) P runs as one population; member m's run lives in workdirs[m].

  Args:
    configs: one config per member (`member_configs`); see `check_members`.
    workdirs: one workdir per member.
    callbacks: called as callback(m, record) after slot m's evaluation; True stops that
      run (a search pruned its trial): from then on it is neither evaluated nor
      checkpointed, its updates are masked, and its result says 'callback'.
    root: where to write `population.json` (the CLI's --workdir), or None.
    on_diverge: 'raise' (a member's non-finite loss stops all members with
      `TrainingDiverged`) or 'drop' (that member stops: its result's `stopped` is
      'diverged' and its `detail` says where; the others go on).
    refill: None, or refill(m, result) -> (config, workdir) | None, called when slot m's
      run ends before the population does (finished, stopped by a callback, diverged);
      it gets that run's `RunResult` and may give the slot a new run of the same
      structure, which starts from its own fresh state (or its workdir's checkpoint) and its
      own step 0, with its own data order and gate progress, while the other members go on
      bit for bit as they would have. None leaves the slot empty (masked).

  Returns:
    One `train.RunResult` per slot for the run in it when the population ended (None for
    a slot whose last run was handed to `refill`). Each member resumes from its own latest
    checkpoint; members need not be at one step.

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

  shared = config.data.source != "synthetic" or (
    len({c.seed for c in configs}) == 1 and refill is None
  )
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
  loop = _PopulationLoop(
    program, compiled, config, spe, callbacks, refill, on_diverge, shared, evaluators[0]
  )
  if root is not None:
    write_population_file(root, configs, workdirs)
  init_states = []
  for m, (c, wd) in enumerate(zip(configs, workdirs, strict=True)):
    mem, state = loop.open(c, wd, evaluators[0 if shared else m], member_images[0 if shared else m])
    loop.members.append(mem)
    init_states.append(state)
  steps_at = sorted({mem.step for mem in loop.members})
  if steps_at != [0]:
    logging.info(
      "Resumed the population from step %s.",
      steps_at[0] if len(steps_at) == 1 else "s " + ", ".join(map(str, steps_at)),
    )
  loop.states = program.put_states(init_states)
  del init_states
  loop.images_dev = program.put_images(member_images)
  loop.hparams_list = [builder.step_hparams(c, spe) for c in configs]
  loop.hparams = program.put_hparams(loop.hparams_list)
  loop.results = [None] * size
  for mem in loop.members:
    loop.start_outputs(mem)
  report = writers.make_progress(spe * config.num_epochs, config.train.log_every_steps)
  try:
    loop.run(report)
  except BaseException:
    for mem in loop.members:
      if not mem.ended:
        checkpointing.close(mem.manager)
        checkpointing.close(mem.best_manager)
        mem.writer.close()
    raise
  for m in range(size):
    loop.end(m, final=True)
  return loop.results


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
