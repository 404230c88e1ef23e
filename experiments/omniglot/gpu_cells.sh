#!/usr/bin/env bash
# Omniglot table cells on one GPU, several at once: `metazoo reproduce CELL... --jobs N --device cuda` with N the
# number of cells, so that each trained model is its own process (one CPU thread each) with a wall-clock budget,
# all appending to OUT/records.jsonl. The runs stop with a checkpoint at the budget and are tested; a later call
# (here, or on a CPU with `metazoo reproduce ... --device cpu`) with a larger budget continues them.
#
#   experiments/omniglot/gpu_cells.sh OUT BUDGET_MINUTES CELL... [-- REPRODUCE_ARGS...]
#
# e.g. experiments/omniglot/gpu_cells.sh runs/gpu 5 maml/omniglot/5w5s fomaml/omniglot/5w5s -- --set eval.episodes=100
# Each run's log is OUT/logs/<run>.log; the records are OUT/records.jsonl.
# The images are decoded into the cache once, before the cells start. PYTHON (default python3) runs metazoo.
set -uo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,11p' "$0"
  exit 2
fi
out=$1 budget=$2
shift 2
cells=() extra=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
  cells+=("$1"); shift
done
python=${PYTHON:-python3}
mkdir -p "$out"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_cells: no CUDA device here')" || exit 2
# one decode for all the cells (the 28x28 cache every Omniglot config but MANN's reads)
"$python" -c "from metazoo.data import create_dataset; create_dataset('omniglot', split='train')" || exit 2
start=$(date +%s)
OMP_NUM_THREADS=1 "$python" -m metazoo.cli reproduce "${cells[@]}" --jobs "${#cells[@]}" --device cuda \
  --budget "$budget" -o "$out" "${extra[@]}"
status=$?
echo "gpu_cells: ${#cells[@]} cells in $(( $(date +%s) - start )) s (exit status $status)"
grep -h "after .* steps" "$out"/logs/*.log 2>/dev/null
exit $status
