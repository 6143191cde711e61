#!/usr/bin/env bash
# The device run of 2026-12-04 (one H200): populations. Run from the repository root on the
# GPU machine with $OUT set; its logs are summarised in benchmarks/README.md.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
export CGAN_JAX_COMPILE_CACHE=/tmp/jax_compile
log() { echo "[t+$SECONDS s] $*" | tee -a "$OUT/timeline.log"; }
log env
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.log"
python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())" | tee -a "$OUT/env.log"
log "benchmark: paper then smoke"
timeout 400 python3 benchmarks/population_throughput.py --settings=paper,smoke \
  --sizes=1,2,4,8,16,32,64 --steps=10 --rounds=3 --warmup=2 --budget_s=300 \
  2>"$OUT/bench.err" | tee "$OUT/bench.log"
log "variants at P=16 (paper)"
timeout 70 python3 benchmarks/population_throughput.py --settings=paper --sizes=16 \
  --conv_grads=unroll --steps=10 --rounds=2 2>/dev/null | grep -E "^\| 16|^#" | tee "$OUT/variants.log"
log "the CLI: 3 seeds, k=3, 64 px, 2 epochs of 2,560 synthetic images"
timeout 90 python3 -m cgan_jax.main --config=configs/cifar64.py:proposed3 \
  --config.population.seeds=0,1,2 --config.data.source=synthetic --config.data.num_train=2560 \
  --config.num_epochs=2 --config.eval.enabled=False --config.train.log_every_steps=5 \
  --workdir=/tmp/pop 2>&1 | grep -vE "orbax|checkpoint_manager" | tail -25 | tee "$OUT/cli.log"
ls /tmp/pop /tmp/pop/seed1 /tmp/pop/seed1/checkpoints | tee -a "$OUT/cli.log"
log done
