#!/usr/bin/env bash
# Every measurement of docs/performance.md: 3 repeats of both benchmarks, both algorithms, both sizes,
# one JSON file each in RESULTS (default bench/results), then the tables (python bench/tables.py RESULTS).
#
#   bash bench/run_all.sh [RESULTS] [PYTHON_WITH_TRL]
#
# PYTHON_WITH_TRL (default: python) runs bench/vs_trl.py; it needs trl>=1.10,<1.13 (pip install -e ".[bench]").
# About 60 minutes on 2 cores. To use both cores, run the two halves side by side, each on its own core:
#   ONLY=vs_trl taskset -c 1 bash bench/run_all.sh R /tmp/trlenv/bin/python &
#   ONLY=step_breakdown taskset -c 0 bash bench/run_all.sh R
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench/results}
trl_python=${2:-python}
mkdir -p "$results"
for repeat in 1 2 3; do
  for size in tiny small; do
    for algo in grpo ppo; do
      if [[ "${ONLY:-vs_trl}" == vs_trl ]]; then
        "$trl_python" bench/vs_trl.py --algo $algo --size $size --json "$results/vs_trl_${algo}_${size}_$repeat.json"
      fi
      if [[ "${ONLY:-step_breakdown}" == step_breakdown ]]; then
        python bench/step_breakdown.py --algo $algo --size $size --json "$results/breakdown_${algo}_${size}_$repeat.json"
      fi
    done
  done
done
python bench/tables.py "$results"
