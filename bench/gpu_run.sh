#!/usr/bin/env bash
# One device call does all GPU verification: build, full test suite on CUDA, benchmarks.
# Usage (through the device tool, from the repo root): bash bench/gpu_run.sh [tests|bench|all]
# Everything lands in $OUT (or bench/results/local when OUT is unset); commit it under bench/results/.
set -uo pipefail
what=${1:-all}
OUT=${OUT:-bench/results/local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
tag="$(date -u +%Y-%m-%d)-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null || echo "git sha unknown"
} > "$OUT/$tag-env.txt" 2>&1
# The GPU machine has no network; if pip's editable install cannot run there, build _C in place
# (tests and benchmarks import the package from the repo root).
if ! python3 -m pip install -v --no-build-isolation --no-deps -e . > "$OUT/$tag-build.log" 2>&1; then
  echo "pip install -e . failed there, building in place" | tee -a "$OUT/$tag-build.log"
  python3 setup.py build_ext --inplace >> "$OUT/$tag-build.log" 2>&1 || echo "build failed, see build.log"
fi
python3 -c "import adjoined_kernels as ak; print('backends', ak.available_backends())" 2>&1 | tee -a "$OUT/$tag-env.txt"
rc=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -rs tests --junitxml="$OUT/$tag-tests.xml" 2>&1 | tee "$OUT/$tag-tests.log" | tail -40
  rc=${PIPESTATUS[0]}
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  (cd bench && python3 bench_loss.py --out "$OUT/$tag-loss.csv" 2>&1 | tee "$OUT/$tag-loss.log")
  (cd bench && python3 bench_conv.py --out "$OUT/$tag-conv.csv" 2>&1 | tee "$OUT/$tag-conv.log")
fi
exit $rc
