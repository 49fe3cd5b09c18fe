#!/usr/bin/env bash
# GPU verification in phases, each sized for one device call (< 10 min). From the repository root:
#
#   bash bench/gpu_run.sh PHASE... [-- ARGS for the bench scripts, e.g. --quick]
#
# Phases, in the order `all` runs them:
#   build          setup.py build_ext --inplace for this GPU's arch (the package is used in place, via PYTHONPATH)
#   tests-cuda     pytest tests/test_cuda_ext.py            (ADJOINED_TRITON_AUTOTUNE=0: one Triton config)
#   tests-triton   pytest on tests/ops (every backend, by op) and every other tests/test_*.py but the CMake build
#                  (CI runs that)  (same; with pytest-xdist, PYTEST_WORKERS processes, default 8: the Triton
#                  compiles are the bottleneck)
#   sanitizer      compute-sanitizer memcheck + racecheck on csrc/tests/sanitizer_run.py --only fprop|dgrad|wgrad|loss
#                  (sanitizer-memcheck / sanitizer-racecheck run one tool)
#   bench-conv     bench/bench_conv.py  (priority-ordered, stops at its budget; e.g. `bench-conv -- --providers
#                  cudnn2 triton triton_nocache triton_noshare --modes full` for what the relaunch cache and
#                  weight sharing buy)
#   bench-loss     bench/bench_loss.py
#   bench-e2e      bench/bench_e2e.py
# Groups: tests = tests-cuda tests-triton; bench = bench-loss bench-e2e bench-conv; all = everything.
# Every phase after build rebuilds first if adjoined_kernels._C does not import (a fresh machine).
#
# Output: $OUT (bench/results/local when unset) gets <date>-<gpu>-<what>.{log,csv,xml}; copy it to bench/results/
# and run `python bench/report.py` here. Env: CALL_S (seconds this invocation may take, default 570: phases that
# no longer fit are skipped and logged), GIT_SHA (recorded in the CSVs; the device copy has no .git),
# CONV_RESUME (an earlier conv CSV: bench-conv continues it instead of starting over), GPU_TAG.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/local}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset ADJOINED_POISON_OUTPUTS TRITON_INTERPRET ADJOINED_TRITON_AUTOTUNE
CALL_S=${CALL_S:-570}
gpu=${GPU_TAG:-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed -e 's/^NVIDIA //' -e 's/ .*//')}
tag="$(date -u +%Y-%m-%d)-$gpu"

phases=() bench_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; bench_args=("$@"); break; fi
  case "$1" in
    all) phases+=(build tests-cuda tests-triton sanitizer bench-loss bench-e2e bench-conv) ;;
    tests) phases+=(tests-cuda tests-triton) ;;
    bench) phases+=(bench-loss bench-e2e bench-conv) ;;
    *) phases+=("$1") ;;
  esac
  shift
done
[ ${#phases[@]} -gt 0 ] || phases=(all)

log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/$tag-phases.log"; }
left() { echo $((CALL_S - SECONDS)); }
# seconds a phase may use: its own cap, or what is left of the call less a margin for shutting down
budget() { local l=$(($(left) - 20)); l=$((l < $1 ? l : $1)); echo $((l > 1 ? l : 1)); }

env_info() {
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
    python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
    echo "git sha: ${GIT_SHA:-unknown}"
    python3 -c "import adjoined_kernels as ak; print('backends', ak.available_backends())"
  } > "$OUT/$tag-env.txt" 2>&1
}

build() {
  local arch
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
  ADJOINED_CUDA_ARCHS=${ADJOINED_CUDA_ARCHS:-$arch} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    timeout "$(budget 560)" python3 setup.py build_ext --inplace > "$OUT/$tag-build.log" 2>&1
  local rc=$?
  tail -3 "$OUT/$tag-build.log"
  # the extension comes back with $OUT: put it in adjoined_kernels/ and name it in the device tool's `carry`,
  # and later calls (a fresh machine after 30 s idle) skip this minute of building
  [ $rc -eq 0 ] && cp adjoined_kernels/_C*.so "$OUT/"
  env_info
  cat "$OUT/$tag-env.txt"
  return $rc
}

ensure_built() {
  python3 -c "import adjoined_kernels._C" 2>/dev/null && return 0
  log "adjoined_kernels._C does not import: building first"
  build
}

pytest_phase() {  # $1: name, $2: pytest-xdist workers (1: none), rest: test files
  local name=$1 workers=$2 par=()
  shift 2
  ensure_built
  # Triton compiles a kernel per test specialisation (seconds each): workers compile in parallel and share
  # Triton's on-disk cache. The tests are not timed, so sharing the GPU does not matter.
  if [ "$workers" -gt 1 ] && python3 -c "import xdist" 2>/dev/null; then par=(-n "$workers"); fi
  ADJOINED_TRITON_AUTOTUNE=0 timeout "$(budget 560)" python3 -m pytest -q -rs ${par[@]+"${par[@]}"} "$@" \
    --junitxml="$OUT/$tag-$name.xml" > "$OUT/$tag-$name.log" 2>&1
  local rc=$?
  tail -25 "$OUT/$tag-$name.log"
  [ $rc -eq 124 ] && echo "$name: stopped by the time limit (see $tag-$name.log for how far it got)"
  return $rc
}

sanitizer() {  # $@: tools
  ensure_built
  local cs rc=0 tool x f r
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in "$@"; do
    for x in fprop dgrad wgrad loss; do
      f="$OUT/$tag-sanitizer-$tool-$x.log"
      if [ "$(budget 150)" -lt 30 ]; then log "sanitizer $tool $x: skipped, no time left in this call"; rc=1; continue; fi
      timeout "$(budget 150)" "$cs" --tool "$tool" --error-exitcode 99 \
        python3 csrc/tests/sanitizer_run.py --only "$x" > "$f" 2>&1
      r=$?
      [ $r -eq 0 ] || rc=1
      log "sanitizer $tool $x: rc=$r; $(grep -m1 -E '(ERROR|RACECHECK) SUMMARY' "$f"); $(grep -m1 'wrong results' "$f")"
    done
  done
  return $rc
}

bench_phase() {  # $1: conv|loss|e2e, $2: the phase's cap in seconds
  ensure_built || return 1
  local csv="$OUT/$tag-$1.csv"
  if [ "$1" = conv ] && [ -n "${CONV_RESUME:-}" ]; then cp "$CONV_RESUME" "$csv"; fi
  python3 "bench/bench_$1.py" --out "$csv" --budget-s "$(budget "$2")" ${bench_args[@]+"${bench_args[@]}"} 2>&1 | tee "$OUT/$tag-$1.log"
  return "${PIPESTATUS[0]}"
}

env_info
status=0
for phase in "${phases[@]}"; do
  if [ "$(left)" -lt 60 ]; then log "$phase: skipped, $(left) s left in this call"; status=1; continue; fi
  log "$phase: start"
  case "$phase" in
    build) build ;;
    tests-cuda) pytest_phase tests-cuda 1 tests/test_cuda_ext.py ;;
    tests-triton) pytest_phase tests-triton "${PYTEST_WORKERS:-8}" \
      tests/ops $(ls tests/test_*.py | grep -v -e '/test_cuda_ext\.py$' -e '/test_cmake_build\.py$') ;;
    sanitizer) sanitizer memcheck racecheck ;;
    sanitizer-memcheck) sanitizer memcheck ;;
    sanitizer-racecheck) sanitizer racecheck ;;
    bench-conv) bench_phase conv 540 ;;
    bench-loss) bench_phase loss 200 ;;
    bench-e2e) bench_phase e2e 480 ;;
    *) echo "unknown phase $phase"; false ;;
  esac
  rc=$?
  [ $rc -eq 0 ] || status=1
  log "$phase: done, rc=$rc"
done
exit $status
