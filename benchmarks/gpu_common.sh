# Shared by the one-call device scripts (benchmarks/quality/gpu.sh, benchmarks/studies/gpu.sh); source it.
# write_machine_json DIR: the GPU, CPU model and cores and torch of this machine -> DIR/machine.json
#   (medkd.measure.machine, the writer benchmarks/quality/run.py uses too; medkd must be importable).
# start_mps SCRATCH: start CUDA MPS when USE_MPS is set (pipes under SCRATCH); falls back to plain CUDA.
# install_wheels SCRATCH SRC: when WHEELS is set, install the wheels in WHEELS into SCRATCH/site and put that folder
#   and SRC (medkd's source) on PYTHONPATH; fails (status 3) when pip does.

write_machine_json() {
  python3 -c 'import sys; from medkd.measure.machine import main; main(sys.argv[1:])' "$1" --device cuda \
    --note "runs in parallel on one GPU${USE_MPS:+ under CUDA MPS}"
}

start_mps() {
  [ -n "$USE_MPS" ] || return 0
  export CUDA_MPS_PIPE_DIRECTORY=$1/mps CUDA_MPS_LOG_DIRECTORY=$1/mpslog
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 20 python3 -c "import torch; torch.zeros(1).cuda().sum().item()"; then
    echo "MPS on"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; echo "MPS off"
  fi
}

install_wheels() {
  [ -n "$WHEELS" ] || return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1/site" \
    "$WHEELS"/*.whl || return 3
  export PYTHONPATH=$1/site:$2
}
