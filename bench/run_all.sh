#!/usr/bin/env bash
# Every measurement of docs/performance.md: 3 repeats of both benchmarks, both algorithms, both sizes, both
# workloads, one JSON file each in RESULTS (default bench/results), then the tables (python bench/tables.py RESULTS).
#
#   bash bench/run_all.sh [RESULTS] [PYTHON_WITH_TRL] [-- OPTIONS OF OUR SIDE]
#
# PYTHON_WITH_TRL (default: python) runs bench/vs_trl.py; it needs trl>=1.10,<1.13 (pip install -e ".[bench]").
# OPTIONS OF OUR SIDE (after --) go to both scripts, e.g. -- --engine NAME --padding-free --ours-tag packed;
# with --ours-tag TAG the files are named ..._TAG_... and the tables show that tag's runs apart.
# WORKLOADS (default "uniform realistic") and SIZES (default "tiny small") narrow the runs; STEPS (default: the
# scripts' 10) and REPEATS (default 3) shorten them: STEPS=3 REPEATS=1 WORKLOADS=realistic SIZES=tiny for a smoke run.
# About 60 minutes per workload on 2 cores (the realistic one longer: 64 rows x up to 128 tokens per step).
# To use both cores, run the two halves side by side, each on its own core:
#   ONLY=vs_trl taskset -c 1 bash bench/run_all.sh R /tmp/trlenv/bin/python &
#   ONLY=step_breakdown taskset -c 0 bash bench/run_all.sh R
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench/results}
trl_python=${2:-python}
shift $(( $# < 2 ? $# : 2 ))
[[ "${1:-}" == "--" ]] && shift
ours=("$@")
tag=""
for ((i = 0; i < ${#ours[@]}; i++)); do
  [[ "${ours[$i]}" == "--ours-tag" ]] && tag="_${ours[$((i + 1))]}"
done
mkdir -p "$results"
for repeat in $(seq 1 "${REPEATS:-3}"); do
  for workload in ${WORKLOADS:-uniform realistic}; do
    # the uniform files keep their old names (vs_trl_grpo_tiny_1.json); the others name their workload
    w=$([[ $workload == uniform ]] && echo "" || echo "_$workload")
    for size in ${SIZES:-tiny small}; do
      for algo in grpo ppo; do
        name="${w}${tag}_${algo}_${size}_$repeat.json"
        if [[ "${ONLY:-vs_trl}" == vs_trl ]]; then
          "$trl_python" bench/vs_trl.py --workload $workload --algo $algo --size $size --json "$results/vs_trl$name" ${STEPS:+--steps $STEPS} \
            ${ours[@]+"${ours[@]}"}
        fi
        if [[ "${ONLY:-step_breakdown}" == step_breakdown ]]; then
          python bench/step_breakdown.py --workload $workload --algo $algo --size $size \
            --json "$results/breakdown$name" ${STEPS:+--steps $STEPS} ${ours[@]+"${ours[@]}"}
        fi
      done
    done
  done
done
python bench/tables.py "$results"
