#!/usr/bin/env bash
# The quality benchmark in one GPU call: run, collect, pack. Run from the project root:
#   USE_MPS=1 bash benchmarks/quality/gpu.sh DATA OUT HARD_DEADLINE_S [run.py run options...]
# DATA: the compact ACDC copy (medkd data compact ../shared/data/acdc DATA --size 128x128); OUT: where raw.json,
# the teacher's weights and runs.tgz (logs, configs, per-epoch records, summaries) are written. USE_MPS=1 starts
# CUDA MPS first (many small runs on one GPU ran about 3x faster with it); WHEELS=DIR installs the wheels in DIR
# into a scratch folder first (for a machine without medkd's dependencies).
set -o pipefail
DATA=$1; OUT=$2; HARD=$3; shift 3
mkdir -p "$OUT"
SCRATCH=$(mktemp -d)  # wheels, MPS pipes and (unless WORK is set) the run folders
source "$(dirname "$0")/../gpu_common.sh"  # write_machine_json, start_mps, install_wheels
install_wheels "$SCRATCH" "$PWD/src" || exit 3
export PYTHONUNBUFFERED=1
WORK=${WORK:-$SCRATCH/work}; mkdir -p "$WORK"
write_machine_json "$WORK"
start_mps "$SCRATCH"
python3 benchmarks/quality/run.py run --data "$DATA" --work "$WORK" --hard-deadline "$HARD" "$@"
python3 benchmarks/quality/run.py collect --work "$WORK" --out "$OUT/raw.json"
cp "$WORK/runs/teacher/checkpoints/best.safetensors" "$OUT/teacher_best.safetensors" 2>/dev/null
(cd "$WORK" && for r in runs/*; do grep '"kind": "epoch"' "$r/metrics.jsonl" > "$r/epochs.jsonl" 2>/dev/null; done; \
 tar czf "$OUT/runs.tgz" logs configs schedule.json recipe.json machine.json runs/*/epochs.jsonl \
   runs/*/train_summary.json runs/*/evaluation/summary.json runs/*/split.json 2>/dev/null)
ls -la "$OUT"
