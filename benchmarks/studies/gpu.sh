#!/usr/bin/env bash
# The three studies' `gpu` budgets in one GPU call: run in parallel, index, report, pack. Run from the project root:
#   USE_MPS=1 bash benchmarks/studies/gpu.sh ACDC BRATS OUT HARD_DEADLINE_S [run.py options...]
# ACDC: the compact ACDC copy (medkd data compact ../shared/data/acdc ACDC --size 128x128); BRATS: the BraTS 2015
# sample as it is (or a copy); OUT: where results/<study>/ (the reports, index.json, runs/*.json), logs.tgz and
# machine.json are written. The presets name their data as ../shared/data/{acdc,brats2015-sample}; the script runs
# them from a scratch folder where those paths point at ACDC and BRATS, so the repository and ../shared are never
# written. USE_MPS=1 starts CUDA MPS first (many small runs on one GPU ran about 3x faster with it, see
# benchmarks/quality); WHEELS=DIR installs the wheels in DIR into the scratch folder first (for a machine without
# medkd's dependencies). New runs are launched until 70% of HARD_DEADLINE_S; runs still going at HARD_DEADLINE_S
# are stopped and listed as unfinished in the reports. DEVICE=cpu runs the same on a CPU (for a smoke test).
set -o pipefail
ACDC=$(realpath "$1"); BRATS=$(realpath "$2"); OUT=$(realpath -m "$3"); HARD=$4; shift 4
REPO=$PWD
mkdir -p "$OUT"
SCRATCH=$(mktemp -d)  # wheels, MPS pipes, the data links and the experiment folders
source "$(dirname "$0")/../gpu_common.sh"  # write_machine_json, start_mps, install_wheels
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
install_wheels "$SCRATCH" "$REPO/src" || exit 3
export PYTHONUNBUFFERED=1
mkdir -p "$SCRATCH/tree/shared/data" "$SCRATCH/tree/project"
ln -s "$ACDC" "$SCRATCH/tree/shared/data/acdc"
ln -s "$BRATS" "$SCRATCH/tree/shared/data/brats2015-sample"
ln -s "$REPO/experiments" "$SCRATCH/tree/project/experiments"
export MEDKD_CACHE=$SCRATCH/cache
write_machine_json "$OUT"
start_mps "$SCRATCH"
SOFT=$(python3 -c "print(int(0.7 * $HARD))")
(cd "$SCRATCH/tree/project" && python3 "$REPO/benchmarks/studies/run.py" --budget gpu --work "$SCRATCH/work" \
  --results "$OUT/results" --device "${DEVICE:-cuda}" --parallel 16 --deadline "$SOFT" --hard-deadline "$HARD" "$@" \
  experiments/paper_a_acdc.yaml experiments/thesis_b_acdc.yaml experiments/kdnet_brats.yaml)
[ -n "$CUDA_MPS_PIPE_DIRECTORY" ] && echo quit | nvidia-cuda-mps-control
(cd "$SCRATCH/work" && tar czf "$OUT/logs.tgz" logs */index.json 2>/dev/null)
ls -la "$OUT" "$OUT/results" 2>/dev/null
