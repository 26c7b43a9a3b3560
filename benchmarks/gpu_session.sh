#!/usr/bin/env bash
# One GPU session, run once where a GPU is lent (issue 13): the CUDA test suite, both CUDA
# benchmarks and the Triton timing script, every log and result named after the GPU
# (`nvidia-smi` name, e.g. nvidia_h200) under benchmarks/results/, and copied to $OUT when the
# device tool sets it (so the files come back).  Budget: about 8 minutes; each step has its own
# timeout so one slow step cannot eat the rest, and a failing step does not stop the next.
#
#   bash benchmarks/gpu_session.sh            # PYTHON=... to pick the interpreter
#
# Needs: a CUDA build of torch and triton, the compiled core (`python setup.py build_ext
# --inplace`, or the `_C` .so carried with the tree), and pytest.  TRITON_INTERPRET must be unset
# (tests/conftest.py sets it only when no CUDA device is present).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
unset TRITON_INTERPRET

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
tag=$(echo "${gpu:-unknown_gpu}" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\+/_/g; s/^_//; s/_$//')
res=benchmarks/results
mkdir -p "$res"
summary="$res/gpu_session_${tag}.log"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

{
  echo "# benchmarks/gpu_session.sh on ${gpu:-unknown GPU}, commit $commit, $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  $PY -c "import torch, triton; p = torch.cuda.get_device_properties(0); \
from dapkernels.backends.triton import device; \
print('torch', torch.__version__, 'triton', triton.__version__, 'cc', (p.major, p.minor), \
'smem optin', p.shared_memory_per_block_optin, 'SMs', p.multi_processor_count, \
'table', device.target(torch.device('cuda', 0)))" 2>&1
} > "$summary"

# step NAME SECONDS CMD...: runs CMD with a timeout, output to $res/NAME_$tag.log
step() {
  local name=$1 limit=$2; shift 2
  local log="$res/${name}_${tag}.log" t0=$SECONDS
  echo "# $* (timeout ${limit}s)" > "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - t0)) s -> $log" | tee -a "$summary"
}

# 1. the CUDA test suite: every Triton module on CUDA tensors (compiled kernels), and the API
#    tests with their CUDA cases; -x off so every failure is listed.
step triton_gpu_tests 210 $PY -m pytest -q -p no:cacheprovider -rs \
  tests/test_triton_interpret.py tests/test_triton_coral.py tests/test_triton_determinism.py \
  tests/test_triton_quadratic_forms.py tests/test_triton_targets.py tests/test_api.py

# 2. the benchmarks (forward+backward, float32 unless said; the issue's GPU bars)
mkdir -p "$res/mmd_cuda_$tag" "$res/coral_cuda_$tag"
step mmd_cuda 100 $PY -m dapkernels.cli bench mmd --device cuda --out "$res/mmd_cuda_$tag"
step coral_cuda 60 $PY -m dapkernels.cli bench coral --device cuda --out "$res/coral_cuda_$tag"
step triton_cuda_timing 100 $PY benchmarks/triton_cuda_timing.py \
  "$res/triton_cuda_timing_${tag}.json"

echo "# done in ${SECONDS} s" >> "$summary"
cat "$summary"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/$res"
  cp -r "$res"/*"$tag"* "$OUT/$res/"
fi
