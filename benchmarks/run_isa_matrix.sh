#!/usr/bin/env bash
# Re-measures the CPU tables of the README under every instruction-set copy of the C++ core
# (DAPKERNELS_ISA=avx512|avx2|baseline, whichever the CPU runs), one fresh process per run,
# into benchmarks/results/<bench>_cpu_<isa>/.  Quiet machine assumed; ~15 min on 2 cores.
# ISAS="avx2" limits the copies, SKIP_CORAL=1 leaves the CORAL runs out.
#   MMD  : 32, 128, 512, 2048 rows per domain at d = 256 vs plain torch (c); TLL (a) and
#          DeepDA (b) at 32 and 128 only (TLL needs 21 s per call at 512); N = 16384, d = 256
#          vs the GEMM reference time 2·t(ZZᵀ).
#   CORAL: the default cases (32:256 32:2048 64:8192 128:512 256:64) vs naive and gram-torch.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results

# run NAME ARGS...: one bench into $out/NAME, its printed report kept as report.txt
run() {
  local name=$1; shift
  mkdir -p "$out/$name"
  python -m dapkernels.cli bench "$@" --silent --out "$out/$name" > "$out/$name/report.txt"
}

for isa in ${ISAS:-avx512 avx2 baseline}; do
  export DAPKERNELS_ISA=$isa
  [ -z "${SKIP_CORAL:-}" ] && run "coral_cpu_$isa" coral
  run "mmd_cpu_small_$isa" mmd --sizes 32 128 --dims 256 --impls ours tll deepda torch --ref-cases
  run "mmd_cpu_$isa" mmd --sizes 32 512 2048 --dims 256 --impls ours torch --ref-cases 16384:256
done
