#!/usr/bin/env bash
# One GPU session: install (offline), GPU + op tests on CUDA, then the microbenchmarks. Results under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PIP_NO_INDEX=1
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { echo "install failed"; cat "$OUT/install.log"; }
python3 -c "import litekernels.patches" 2>/dev/null || ln -sfn ../patches litekernels/patches  # editable install fallback
ls .wheels/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-deps .wheels/*.whl >> "$OUT/install.log" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout ${TEST_TIMEOUT:-330} python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py tests/test_rms_norm.py tests/test_rope.py \
    tests/test_swiglu.py tests/test_attention.py tests/test_patches.py tests/test_generation.py -W ignore > "$OUT/pytest-gpu.txt" 2>&1
  echo "pytest rc=$?"; tail -5 "$OUT/pytest-gpu.txt"
fi
if [ "${GEN_BENCH:-0}" = 1 ]; then
  timeout ${GEN_TIMEOUT:-300} python3 -m bench.bench_generate ${GEN_ARGS:-} > "$OUT/bench-generate-log.txt" 2>&1
  echo "generate bench rc=$?"; grep -v "^ \|^{$\|^}$" "$OUT/bench-generate-log.txt" | tail -25
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout ${BENCH_TIMEOUT:-280} python3 -m bench.bench_ops ${BENCH_ARGS:-} > "$OUT/bench-log.txt" 2>&1
  echo "bench rc=$?"; tail -45 "$OUT/bench-log.txt"
fi
