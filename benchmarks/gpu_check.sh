#!/usr/bin/env bash
# GPU check of the whole pipeline at small scale, with timings (issue 16, item 5). Run it on a CUDA machine:
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        (default benchmarks/results/gpu/<date>)
# It needs a dawm install with a CUDA torch (pip install torch; pip install -e ".[test]") and writes, into
# RESULTS_DIR: nvidia-smi.txt, the CUDA tests' log, and timings.tsv (stage, seconds) plus each stage's log. Every
# stage runs with --device cuda; the data build is CPU (MuJoCo). About 10 minutes on one H200.
set -euo pipefail
OUT=${1:-benchmarks/results/gpu/$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
export DAWM_HOME=${DAWM_HOME:-$(mktemp -d)/dawm} MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-$(mktemp -d)/minari}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || { echo "no nvidia-smi: not a CUDA machine" >&2; exit 2; }
python -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  | tee "$OUT/torch.txt"
printf 'stage\tseconds\n' > "$OUT/timings.tsv"
stage() {  # stage NAME COMMAND...: run, log, time
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  printf '%s\t%.1f\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" >> "$OUT/timings.tsv"
}
W=$DAWM_HOME/gpu-check
D=dawm-gpu/hopper/medium-n100k-v0
stage tests_cuda python -m pytest -p no:warnings tests/test_cuda.py
stage data_build dawm data build --task hopper --level medium --steps 100000 --id $D --no-progress
stage world_model_paper_1000 dawm train world-model --dataset $D --out $W/bundle --preset paper --steps 1000 --device cuda --no-progress
stage world_model_cpu_preset_5000 dawm train world-model --dataset $D --out $W/bundle-cpu --preset cpu --steps 5000 --device cuda --no-progress
stage idm_2000 dawm train idm --dataset $D --out $W/bundle --steps 2000 --device cuda --no-progress
stage generate_h7_10k dawm generate --bundle $W/bundle --seed-dataset $D --out dawm-gpu/hopper/gen-v0 --subsample 10 --device cuda --no-progress
stage agents_td3bc_10seeds_20k dawm train agent --algo td3bc --dataset $D --synthetic dawm-gpu/hopper/gen-v0 --seeds 10 --steps 20000 --eval-every 10000 --eval-episodes 5 --device cuda --out $W/td3bc --no-progress
stage agents_iql_10seeds_20k dawm train agent --algo iql --dataset $D --seeds 10 --steps 20000 --eval-every 10000 --eval-episodes 5 --device cuda --out $W/iql --no-progress
stage dd_paper_1000 dawm train dd --dataset $D --out $W/dd --preset paper --steps 1000 --device cuda --no-progress
stage dd_idm_2000 dawm train idm --dataset $D --out $W/dd --steps 2000 --device cuda --no-progress
stage dd_evaluate_2x2_n20 dawm evaluate-planner $W/dd --episodes 2 --seeds 2 --sampling-steps 20 --device cuda --out $W/dd-eval
cp "$W"/bundle/quality_curve.json "$OUT/" 2>/dev/null || true
cp "$W"/td3bc/results.json "$OUT/td3bc_results.json" && cp "$W"/iql/results.json "$OUT/iql_results.json"
cp "$W"/dd-eval/evaluation.json "$OUT/dd_evaluation.json"
cat "$OUT/timings.tsv"
