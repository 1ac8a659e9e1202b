#!/bin/sh
# bench/cuda_check.sh -- one run on a GPU machine: build, the CUDA tests, the
# layer benchmark. Logs go to $OUT (or ./cuda-check-logs); the last lines
# printed are the summary tables.
#   sh bench/cuda_check.sh [bench_layers options, default: --shape all --layers 4]
set -u
out=${OUT:-cuda-check-logs}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
make -j16 > "$out/build.log" 2>&1 && make -j16 bench >> "$out/build.log" 2>&1 && make -j16 build/tests/test_cuda >> "$out/build.log" 2>&1 || {
    tail -n 40 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
GQ_TEST_DATA=tests/data timeout 900 ./build/tests/test_cuda > "$out/test_cuda.log" 2>&1
echo "test_cuda exit status $?"
grep -E '^(FAIL|SKIP|  |timing|CUDA|TIMEOUT)|RESULT' "$out/test_cuda.log" | head -n 150
if [ $# -eq 0 ]; then set -- --shape all --layers 4; fi
timeout 1800 ./build/bench/bench_layers "$@" > "$out/bench_layers.txt" 2> "$out/bench_layers.log"
echo "bench_layers exit status $?"
tail -n 30 "$out/bench_layers.log"
cat "$out/bench_layers.txt"
