# Sourced by the benchmarks/gpu_*.sh scripts once they have set OUT and WORK: the folders, the
# environment, a timer for the log (stamp), and which device this machine has.
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/benchmarks
PY=${PY:-python3}
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
nvidia-smi -L 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
