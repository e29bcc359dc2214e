#!/usr/bin/env bash
# The GPU check of issue 20 in one go (fits in 8 minutes on an H200): the CUDA-marked tests, then
# bench/gpu_check.py (bf16 generation and training tokens/s, training MFU, peak memory and RL steps of the
# small model and of a ~0.5B Qwen2-style model built from config), all into one JSON file.
#
#   bash bench/gpu_check.sh [OUT.json]        (default gpu_check.json)
#
# Needs torch, transformers, accelerate (no TRL, no downloads). Without CUDA it says so and runs the CPU
# smoke version (tiny shapes; the numbers are not GPU figures), so the script is known to work before a
# GPU is lent.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check.json}
extra=$(mktemp)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  mode=()
  echo "CUDA: $(python -c 'import torch; print(torch.cuda.get_device_name())')"
else
  mode=(--cpu-smoke)
  echo "no CUDA device here: running the CPU smoke version of the GPU check (tiny shapes; not GPU figures)"
fi
# CUDA-marked tests, when the tree has such a marker (tests/conftest.py or pyproject.toml)
if python -m pytest --markers 2>/dev/null | grep -q "@pytest.mark.cuda"; then
  start=$(date +%s)
  timeout 120 python -m pytest -m cuda -q tests > "$extra.log" 2>&1
  rc=$?
  python - "$extra" "$extra.log" "$rc" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
tail = open(sys.argv[2]).read().splitlines()[-15:]
json.dump({"cuda_tests": {"rc": int(sys.argv[3]), "seconds": int(sys.argv[4]), "tail": tail}}, open(sys.argv[1], "w"))
PY
else
  echo '{"cuda_tests": "no cuda marker registered in this tree (tests/conftest.py, pyproject.toml): no CUDA tests"}' > "$extra"
fi
timeout 450 python bench/gpu_check.py --out "$out" --extra "$extra" "${mode[@]+"${mode[@]}"}"
rc=$?
rm -f "$extra" "$extra.log"
[[ $rc == 124 ]] && echo "bench/gpu_check.py ran past 450 s and was stopped" >&2
exit $rc
