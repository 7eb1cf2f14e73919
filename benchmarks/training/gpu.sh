#!/usr/bin/env bash
# Issue 16's GPU measurements in one device call. Run from the project root:
#   WHEELS=.whl bash benchmarks/training/gpu.sh OUT
# Writes OUT/training_gpu.{json,md} (benchmarks/training/run.py --device cuda: the issue's UNet++ -> ENet at
# 256x256 batch 16 and kdnet3d at 64^3, every mode including torch.compile and the CUDA-graph modes),
# OUT/step_cuda.{json,md} (benchmarks/student_step/run.py --device cuda: each student's step, ATen ops, fixed cost)
# and OUT/machine.json. WHEELS=DIR installs the wheels in DIR into a scratch folder first (MONAI, nibabel, pydantic
# for a machine without medkd's dependencies). Each part has its own time limit, so one that hangs in compilation
# still leaves the others' results. Copy the outputs to benchmarks/training/ and benchmarks/student_step/.
set -o pipefail
OUT=$1
mkdir -p "$OUT"
SCRATCH=$(mktemp -d)
source "$(dirname "$0")/../gpu_common.sh"  # write_machine_json, install_wheels
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
install_wheels "$SCRATCH" "$PWD/src" || exit 3
export PYTHONUNBUFFERED=1
write_machine_json "$OUT"
timeout "${STEP_LIMIT_S:-120}" python3 benchmarks/student_step/run.py --device cuda --out-dir "$OUT" \
  2>&1 | tee "$OUT/student_step.log"
timeout "${TRAIN_LIMIT_S:-360}" python3 benchmarks/training/run.py --device cuda 2>&1 | tee "$OUT/training.log"
cp benchmarks/training/training_gpu.json benchmarks/training/training_gpu.md "$OUT"/ 2>/dev/null
ls -la "$OUT"
