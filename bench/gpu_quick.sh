#!/bin/sh
# bench/gpu_quick.sh -- the short GPU check for a call with little device time left: build, the
# int4 kernel's tests and benchmark, the int4 model test, and the layer benchmark of 7B and the
# Qwen3-30B-A3B MoE shape (the chunked forward). Logs in $OUT/quick.txt (and $OUT/quick-logs.tar.gz).
set -u
OUT=${OUT:-gpu-logs}
L=gpu-logs/quick
mkdir -p "$OUT" "$L"
R="$OUT/quick.txt"
: > "$R"
t0=$(date +%s)
say() { echo "$*" | tee -a "$R"; }
step() { # NAME LIMIT CMD...: run, log, say rc and seconds
    n=$1 lim=$2
    shift 2
    s=$(date +%s)
    timeout "$lim" "$@" > "$L/$n.log" 2>&1
    rc=$?
    say "== $n rc=$rc $(($(date +%s) - s)) s (at $(($(date +%s) - t0)) s)"
    return $rc
}
MAKEVARS="CUDA=1"
if [ ! -f /usr/include/jansson.h ] && [ -f .gqdeps.tar.xz ]; then
    [ -d .gqdeps ] || { mkdir -p .gqdeps && tar xJf .gqdeps.tar.xz -C .gqdeps; }
    MAKEVARS="CUDA=1 DEPS=.gqdeps/usr"
fi
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader); $(date -u +%F)"
# shellcheck disable=SC2086
step build 300 make -j16 $MAKEVARS all bench build/tests/test_cuda_w4a16 build/tests/test_q4_model \
    build/tests/test_qlayer_chunk || { tail -n 40 "$L/build.log" | tee -a "$R"; exit 1; }
step test_cuda_w4a16 120 ./build/tests/test_cuda_w4a16
grep -E '^FAIL|RESULT' "$L/test_cuda_w4a16.log" | head -n 20 | tee -a "$R"
step test_q4_model 120 ./build/tests/test_q4_model
grep -E '^FAIL|RESULT|ppl ' "$L/test_q4_model.log" | head -n 20 | tee -a "$R"
step bench_w4a16 120 ./build/bench/bench_w4a16 --T 1,8,16,64,4096
grep -E '^\||bandwidth|floor' "$L/bench_w4a16.log" | tee -a "$R"
for s in qwen3moe 7b; do
    GQ_LOG=debug step "layers_$s" 120 ./build/bench/bench_layers --shape "$s" --layers 2
    grep -A 8 "^$s on" "$L/layers_$s.log" | tee -a "$R"
done
tar czf "$OUT/quick-logs.tar.gz" "$L"
