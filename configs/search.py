"""Knowledge-transfer-graph search (`python -m cgan_jax.search --config=configs/search.py`).

Variants, after a colon:

  table3     (default) the paper's Tables 3 and 8: k=3, feature maps near the output
             (layers 3 and 4), all four gates on every edge, 200 epochs, 1,500 trials
  table2     the paper's Table 2: k=3, the transfer method searched too (image, input
             side, output side), through and cutoff gates only, 50 epochs, each trial
             ranked by its last evaluation ("the model parameters at the end of
             learning"). One study draws the method per trial, about 500 trials each of
             1,500; the paper's Figure 7 tried 1,500 per method: run one study per method
             (`--config.search.transfer_methods=M --study_dir=DIR_M`) and draw them side
             by side with `report --compare=DIR_2,DIR_3` (README)
  k2         k=2, generated-image transfer, all four gates (4^4 = 256 distinct graphs)
  smoke      (modifier) tiny: synthetic 32 px data, widths 4, 1 epoch, 4 trials, FID of
             20 samples with the offline weights; a few minutes on 2 CPU cores

Each trial is a normal run of `configs/cifar64.py`'s fields (so the best graph re-trains
with `python -m cgan_jax.main`) plus `config.search`:

  num_trials         finished (complete or pruned) trials the study stops at (paper: 1,500)
  num_epochs         epochs per trial (paper: 200)
  gates              the gates each edge chooses from (comma-separated)
  transfer_methods   '' = keep config.graph.transfer; else the methods to choose from
  objective          'is' (maximise, the paper; needs the full Inception weights) or 'fid'
                     (minimise; works with the offline FID-only weights)
  select             which evaluation is the trial's result: 'best' (its best
                     evaluation, the paper's "maximum IS" of Table 3's search) or 'last'
                     (the end of learning, the paper's Table 2)
  generator          0 = the best generator of the trial (the paper), i = G_i only
  sampler, seed      'random' or 'tpe'; the sampler's seed. The paper names no sampler
                     (nor Optuna): random is our choice, the plainest reading of "attempted
                     1,500 times" and what the KTG code's random search does
  pruner             'none' (the paper describes no early stopping; our reading),
                     'successive_halving' or 'hyperband'
  eval_samples       samples per generator of each evaluation during the search
  eval_every_epochs  how often a trial evaluates (and checkpoints)
  keep_checkpoints   keep a finished trial's checkpoints (a 64 px k=3 state is 162 MB;
                     1,500 of them would fill a disk); they are always kept while it runs
  population         trials a worker trains together as one population (one compiled step
                     for all of them, `run/population.py`); 1 = one trial at a time. A slot
                     whose trial ends (complete, pruned, diverged) is told at once and
                     refilled with a newly asked trial from its own step 0. Pays on a GPU
                     with conv_impl='matmul' (benchmarks/README.md), not on 2 CPU cores
  heartbeat_s, grace_s   a running trial proves it is alive every heartbeat_s; one silent
                     for grace_s is failed and re-queued (at most max_retry times)
"""

import ml_collections

from cgan_jax import configlib
from cgan_jax.errors import choice_error

VARIANTS = ("table3", "table2", "k2", "smoke")
ALL_GATES = "through,cutoff,positive_linear,negative_linear"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
  for v in variants:
    if v not in VARIANTS:
      raise choice_error("config variant", v, VARIANTS)
  setting = ([v for v in variants if v != "smoke"] or ["table3"])[-1]
  c = configlib.load_sibling(
    __file__, "cifar64.py:" + ("proposed" if setting == "k2" else "proposed3")
  )
  s = c.search = ml_collections.ConfigDict()
  s.num_trials = 1500
  s.num_epochs = 200
  s.gates = ALL_GATES
  s.transfer_methods = ""
  s.objective = "is"
  s.select = "best"
  s.generator = 0
  s.sampler = "random"
  s.seed = 0
  s.pruner = "none"
  # 5,000 samples: IS/FID of that size rank graphs reliably at a tenth of 50,000's cost.
  s.eval_samples = 5000
  # Every 5 epochs: 40 evaluations per 200-epoch trial; evaluating every epoch would cost
  # more than the training itself on a GPU.
  s.eval_every_epochs = 5
  s.keep_checkpoints = False
  s.population = 1
  s.heartbeat_s = 60
  s.grace_s = 180
  s.max_retry = 3
  s.study_name = "cgan_jax"
  if setting == "table2":
    s.num_epochs = 50  # "The number of learning epochs was set to 50" (section 4.3)
    s.select = "last"  # "evaluated using the model parameters at the end of learning"
    s.gates = "through,cutoff"
    s.transfer_methods = "image,feature_input_side,feature_output_side"
  if "smoke" in variants:
    c.data.source = "synthetic"
    c.data.image_size = 32  # the feature transfers need G's 4 layers of 32 px
    c.data.num_train = 64
    c.model.g_width = 4
    c.model.d_width = 4
    c.train.batch_size = 16
    c.train.log_every_steps = 2
    c.eval.inception_weights = "fid_helper"
    c.eval.batch_size = 20  # the tests' Inception batch: compiled once per test run
    c.eval.num_reference = 20
    c.eval.num_grid = 4
    s.num_trials = 4
    s.num_epochs = 1
    # One epoch: with the paper's epoch-wise progress the linear gates would stay at their
    # start values (p = 0) for the whole trial; step-wise progress lets them move.
    c.graph.progress = "step"
    s.objective = "fid"
    s.eval_samples = 20
    s.eval_every_epochs = 1
    # Short, but with room for a loaded 2-core machine: a worker whose heartbeat is late by
    # more than grace_s loses its trial to another worker (a dead worker on this host is
    # found at once by its pid, whatever grace_s is).
    s.heartbeat_s = 2
    s.grace_s = 30
  c.num_epochs = s.num_epochs
  return c
