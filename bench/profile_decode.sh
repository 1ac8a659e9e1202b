#!/bin/sh
# bench/profile_decode.sh -- where a decode step's GPU time goes: Nsight Compute (ncu) times every
# kernel of bench_generate's run on a checkpoint (one metric, gpu__time_duration, kernels
# serialised), and bench/ncu_summary.py sums them by kernel over the run's decode steps. Compare
# the per-step GPU sum with the step's wall time (bench_generate's ms/step, or the decode table):
# the difference is launch gaps and host work, which recorded steps (GQ_CUDA_GRAPH=1) remove.
#
#   sh bench/profile_decode.sh MODEL_DIR [LABEL]     (GPU machine, after `make CUDA=1 bench`)
#   PROMPT=2048 NEW=8 BATCH=1                        bench_generate's --prompt --new --batches
#
# Writes $OUT/prof-LABEL.csv (ncu's raw rows) and prints the summary.
set -u
M=$1
LABEL=${2:-$(basename "$M")}
OUT=${OUT:-gpu-logs}
PROMPT=${PROMPT:-2048} NEW=${NEW:-8} BATCH=${BATCH:-1}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
[ -n "$NCU" ] || { echo "profile_decode: ncu not found"; exit 1; }
CSV="$OUT/prof-$LABEL.csv"
# warm-up short: one prompt and 4 decode steps, then the timed prompt and NEW steps
"$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --page raw --print-units base \
    ./build/bench/bench_generate --device cuda --models "$M" --labels "$LABEL" --batches "$BATCH" \
    --prompt "$PROMPT" --new "$NEW" --reps 1 --warmup short --bw-mib 0 --check 0 --chunk 2048 > "$CSV.tmp" 2> "$OUT/prof-$LABEL.err"
rc=$?
grep -v '^==PROF==' "$CSV.tmp" > "$CSV"
rm -f "$CSV.tmp"
[ $rc -eq 0 ] || { echo "profile_decode: ncu rc $rc"; tail -n 20 "$OUT/prof-$LABEL.err"; }
python3 bench/ncu_summary.py "$CSV" --new "$NEW"
