#!/usr/bin/env bash
# Build the CPU emulation of the adjoined CUDA ops (ops in namespace adjoined_emu, CPU dispatch key),
# with AddressSanitizer, for checking kernel index logic, bounds and alignment without a GPU.
# Usage: [NS=adjoined] [SANITIZE=0] csrc/emu/build_emu.sh [OUT_DIR]   (default build/emu; g++ >= 11, the CUDA headers)
# NS sets the op namespace (default adjoined_emu; "adjoined" for check_emu_tests.py, never next to _C).
# SANITIZE=0 builds without AddressSanitizer (-O2), a library that loads into any process: the test suite's
# build (tests/ops/test_emu.py).
# Then: LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
#       .venv/bin/python csrc/emu/check_emu.py build/emu/libadjoined_emu.so
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/build/emu}
PY=${PYTHON:-$ROOT/.venv/bin/python}
CUDA=${CUDA_HOME:-/usr/local/cuda}
TORCH=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ABI=$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
NVINC="$TORCH/../nvidia/cu13/include"
mkdir -p "$OUT"
if [ "${SANITIZE:-1}" = 0 ]; then SAN=(-O2); else SAN=(-O1 -g -fsanitize=address -fno-omit-frame-pointer); fi
FLAGS=(-std=c++20 -fPIC "${SAN[@]}" -DADJ_EMULATE -DADJ_NS=${NS:-adjoined_emu} -D_GLIBCXX_USE_CXX11_ABI=$ABI
       -I"$ROOT/csrc" -I"$TORCH/include" -I"$TORCH/include/torch/csrc/api/include" -I"$CUDA/include" -I"$NVINC"
       -Wno-deprecated-declarations)
OBJS=()
for src in "$ROOT"/csrc/*.cu "$ROOT"/csrc/*.cpp; do
  base=$(basename "$src")
  [ "$base" = py_module.cpp ] && continue
  obj="$OUT/${base}.o"
  lang=c++
  echo "emu: compiling $base"
  g++ "${FLAGS[@]}" -x "$lang" -c "$src" -o "$obj" &
  OBJS+=("$obj")
  while [ "$(jobs -rp | wc -l)" -ge "${MAX_JOBS:-2}" ]; do wait -n; done
done
wait
g++ -shared "${SAN[@]}" -o "$OUT/libadjoined_emu.so" "${OBJS[@]}" -L"$TORCH/lib" -lc10 -ltorch_cpu -ltorch \
    -Wl,-rpath,"$TORCH/lib" -lpthread
echo "emu: built $OUT/libadjoined_emu.so"
