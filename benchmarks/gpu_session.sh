#!/bin/bash
# The one device run of a session with a lent GPU (issue 16's GPU figures): the GPU tests, the
# per-tensor kernel costs (with a sweep of the Triton pass's tile, warps and programs), then the
# Recorder's overhead on the ResNet (batch 256) and the CNN: the torch-ops path, the Triton pass
# at its fastest configuration (RUNS times; once with the MLP and the transformer too). Every part
# runs under its own timeout and the run goes on past a failure; the logs land in $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh [repeats] [runs]
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu-session}
REPEATS=${1:-9}
RUNS=${2:-3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "== GPU tests"
timeout 240 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25
echo "== per-tensor kernels"
timeout 240 python3 benchmarks/gpu_stats_kernel.py --profile --best "$OUT/best.txt" > "$OUT/kernels.md" 2>&1
grep "^|\|^###\|fastest\|Error" "$OUT/kernels.md" | head -80
BEST=$(cat "$OUT/best.txt" 2>/dev/null || echo 2048,8,4)
probe() {  # label, models, then probe_overhead's arguments
  local label=$1 models=$2; shift 2
  echo "== probe_overhead, $label"
  timeout 200 python3 benchmarks/probe_overhead.py --device cuda --models "$models" --repeats "$REPEATS" "$@" \
    2>&1 | tee -a "$OUT/probe_overhead.md" | grep "^|\|Error\|error\|torch "
}
probe "torch ops" resnet,cnn --torch-ops
for run in $(seq "$RUNS"); do
  models=resnet,cnn
  [ "$run" = 1 ] && models=resnet,cnn,mlp,transformer
  probe "Triton, run $run" "$models" --triton-config "$BEST"
done
