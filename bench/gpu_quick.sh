#!/bin/sh
# bench/gpu_quick.sh -- the short GPU check for a call with little device time left, most
# telling first: build; the GPTQ solve's, the int4 kernel's and the backend's CUDA tests; a
# Llama-2-7B layer and the Qwen3-30B-A3B MoE layer (bench_layers); pycoder-5m quantized on the
# GPU (the export from the packed qweight) and its perplexity and KL against the fp16 model;
# the families and chunk tests; batch-1 decode of a synthetic 7B in fp16 and int4 (256 new
# tokens), the default and int4 with the GEMV's ordinary launch (GQ_CUDA_PDL=0); the synthetic 7B disk to
# disk (default, and with GQ_LOAD_AHEAD=0). PARTS="tests w4 layers decode e2e" (the default: all, in this
# order) picks some; also "prof" (Nsight Systems / Compute over the 7B layer, the GEMV and the GPTQ block
# kernel), "tf32" (GQ_CUDA_GPTQ_TF32's speed and perplexity) and "prefill" (batch 64); all of them take more than one call's 10 minutes on a fresh machine: run
# PARTS="tests w4 layers", then PARTS="decode e2e" on the same warm machine (within 30 s). Logs in gpu-logs/quick; $OUT/quick.txt has the summary, $OUT/quick-logs.tar.gz the logs.
set -u
OUT=${OUT:-gpu-logs}
L=gpu-logs/quick
mkdir -p "$OUT" "$L" bench-models
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
pack_logs() { tar czf "$OUT/quick-logs.tar.gz" "$L"; }
MAKEVARS="CUDA=1"
if [ ! -f /usr/include/jansson.h ] && [ -f .gqdeps.tar.xz ]; then
    [ -d .gqdeps/usr ] || { mkdir -p .gqdeps && tar xJf .gqdeps.tar.xz -C .gqdeps; }
    MAKEVARS="CUDA=1 DEPS=.gqdeps/usr"
fi
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader); $(date -u +%F)"
say "nccl: $(ls /usr/lib/x86_64-linux-gnu/libnccl.so* /usr/local/cuda/lib64/libnccl.so* /usr/include/nccl.h /usr/local/cuda/include/nccl.h 2>/dev/null | tr '\n' ' ')"
# shellcheck disable=SC2086
step build 300 make -j16 $MAKEVARS all bench build/tests/test_cuda build/tests/test_cuda_gptq \
    build/tests/test_cuda_w4a16 build/tests/test_q4_model build/tests/test_qlayer_chunk build/tests/test_families ||
    { tail -n 40 "$L/build.log" | tee -a "$R"; exit 1; }
grep -i 'nccl' "$L/build.log" | head -n 1 | tee -a "$R"

part_tests() {
    for t in test_cuda_gptq test_q4_model test_cuda test_cuda_w4a16; do
        step "$t" 120 "./build/tests/$t"
        grep -E '^FAIL|RESULT' "$L/$t.log" | head -n 20 | tee -a "$R"
    done
    # the GEMV as a programmatic dependent launch (decode steps after rmsnorm / glu / merge): the same
    # bits (passed on the H100 2026-12-08; its speed not yet measured)
    step test_q4_model_nopdl 120 env GQ_CUDA_PDL=0 ./build/tests/test_q4_model
    grep -E '^FAIL|RESULT' "$L/test_q4_model_nopdl.log" | head -n 20 | sed 's/^/GQ_CUDA_PDL=0 /' | tee -a "$R"
    M=tests/data/pycoder-5m
    step q5m 120 ./build/gq quantize --model $M --out bench-models/q5m-quick --calib calib/python-sitepackages.jsonl \
        --device cuda --force
    grep -E '^done in' "$L/q5m.log" | tee -a "$R"
    step ppl5m 120 ./build/gq ppl --model bench-models/q5m-quick --base $M --text tests/data/text/python-stdlib-eval.txt \
        --device cuda
    grep -E '^(ppl|base ppl|kld) ' "$L/ppl5m.log" | tee -a "$R"
    step test_qlayer_chunk 150 env GQ_TEST_DEVICE=cuda ./build/tests/test_qlayer_chunk
    grep -E '^FAIL|RESULT|rank' "$L/test_qlayer_chunk.log" | head -n 20 | tee -a "$R"
    step test_families 120 env GQ_TEST_DEVICE=cuda ./build/tests/test_families
    grep -E '^FAIL|RESULT' "$L/test_families.log" | head -n 20 | tee -a "$R"
    pack_logs
}

# the int4 GEMV at the 7B's shapes (the ring loads it was measured against, 2026-12-08, were no faster
# and are gone: bench/results/quick-h100-2026-12-08.txt)
part_w4() {
    timeout 60 ./build/bench/bench_w4a16 --T 1,8 --shapes 4096x12288,4096x4096,4096x22016,11008x4096 --reps 9 2>&1 |
        grep -E '^\| [0-9]' | tee -a "$R"
    # fewer loads in flight per lane, fewer registers (118 -> 64 at U = 4), more warps an SM: the same
    # test, then the same benchmark (GQ_CUDA_W4_U, not yet run on a GPU)
    for u in 4 2; do
        GQ_CUDA_W4_U=$u step "test_cuda_w4a16_u$u" 120 ./build/tests/test_cuda_w4a16
        grep -E '^FAIL|RESULT' "$L/test_cuda_w4a16_u$u.log" | head -n 10 | sed "s/^/GQ_CUDA_W4_U=$u /" | tee -a "$R"
        GQ_CUDA_W4_U=$u timeout 60 ./build/bench/bench_w4a16 --T 1,8 --shapes 4096x12288,4096x4096,4096x22016,11008x4096 \
            --reps 9 2>&1 | grep -E '^\| [0-9]' | sed "s/^/GQ_CUDA_W4_U=$u /" | tee -a "$R"
    done
    pack_logs
}

part_layers() {
    # (qwen3moe without GQ_LOG=debug: debug syncs around each of its 2048 Hessian updates a layer)
    GQ_LOG=debug step layers_7b 120 ./build/bench/bench_layers --shape 7b --layers 2
    grep -A 6 "^7b on" "$L/layers_7b.log" | tee -a "$R"
    # the Hessians of up to 2048 columns in one GEMM (0.937 s forward + Hessian on 2026-12-07 with panels)
    step layers_qwen3moe 120 ./build/bench/bench_layers --shape qwen3moe --layers 3
    grep -A 6 "^qwen3moe on" "$L/layers_qwen3moe.log" | tee -a "$R"
    pack_logs
}

# recorded steps with the GEMV as a programmatic dependent launch (the defaults; H100 2026-12-08:
# int4 242.9 tok/s, fp16 159.3), then int4 with an ordinary launch (GQ_CUDA_PDL=0: 235.2 tok/s)
part_decode() {
    ROWS="7b:int4:1 7b:fp16:1" NEW=256 BUDGET_S=150 OUT="$L/dtg" sh bench/decode_table.sh > "$L/decode_graph.log" 2>&1
    grep -E '^\| 7b|Goals|PASS|FAIL|replayed' "$L/decode_graph.log" | tee -a "$R"
    GQ_CUDA_PDL=0 ROWS="7b:int4:1" NEW=256 BUDGET_S=100 OUT="$L/dt" sh bench/decode_table.sh > "$L/decode.log" 2>&1
    grep -E '^\| 7b|PASS|FAIL' "$L/decode.log" | sed 's/^/GQ_CUDA_PDL=0 /' | tee -a "$R"
    GQ_CUDA_W4_U=4 ROWS="7b:int4:1" NEW=256 BUDGET_S=100 OUT="$L/dt4" sh bench/decode_table.sh > "$L/decode_u4.log" 2>&1
    grep -E '^\| 7b|PASS|FAIL' "$L/decode_u4.log" | sed 's/^/GQ_CUDA_W4_U=4 /' | tee -a "$R"
    pack_logs
}

# issue 16's prefill goal (int4 within 1.3x of fp16 at batch 64, 2048-token prompts): never run;
# 8 new tokens a sequence (the decode rows above give the decode figures)
part_prefill() {
    ROWS="7b:fp16:64 7b:int4:64" NEW=8 BUDGET_S=300 OUT="$L/pf" sh bench/decode_table.sh > "$L/prefill.log" 2>&1
    grep -E '^\| 7b|Goals|PASS|FAIL|view' "$L/prefill.log" | tee -a "$R"
    pack_logs
}

# disk to disk with the defaults (the next layer's weights loaded on their own thread while a layer
# computes: H100 2026-12-08 30.7 s), then with GQ_LOAD_AHEAD=0 (each layer's weights loaded when it
# starts: 35.2 s), its checkpoint compared with the first's
part_e2e() {
    GQ_LOG=debug sh bench/gpu.sh e2e > "$L/e2e.log" 2>&1
    grep -E '^done in|^time: ' gpu-logs/e2e_7b.log | tee -a "$R"
    grep -E 'next layer' gpu-logs/e2e_7b.log | head -n 1 | tee -a "$R"
    cp gpu-logs/e2e_7b.log "$L/e2e_7b_debug.log"
    pack_logs
    [ "${E2E_ONE:-0}" = 1 ] && return 0 # (E2E_ONE=1: the default run only)
    cp -r bench-models/q-synth-7b bench-models/e2e-first 2>/dev/null
    # each layer loaded when it starts (the synthetic checkpoint is made already): the same bytes
    GQ_LOAD_AHEAD=0 sh bench/gpu.sh e2e > "$L/e2e_noahead.log" 2>&1
    grep -E '^done in' gpu-logs/e2e_7b.log | sed 's/^/GQ_LOAD_AHEAD=0 /' | tee -a "$R"
    for f in bench-models/e2e-first/*.safetensors; do
        cmp -s "$f" "bench-models/q-synth-7b/$(basename "$f")" && say "same bytes: $(basename "$f")" ||
            say "DIFFERENT: $(basename "$f")"
    done
    rm -rf bench-models/e2e-first
    pack_logs
}

# where the time goes, for the next changes (none of these has run yet): the 7B layer's kernels
# (Nsight Systems, bench/nsys_summary.py), the int4 decode GEMV's and the GPTQ block kernel's
# speed of light and warp stalls (Nsight Compute; the block kernel: 4 launches of the gate|up solve,
# the 65th-68th of a one-layer bench_layers run: q|k|v and o take 32 each)
part_prof() {
    PROF_SHAPE=7b sh bench/gpu.sh nsysmoe > "$L/nsys7b.log" 2>&1
    grep -v '^nsys_' "$L/nsys7b.log" | head -n 40 | tee -a "$R"
    cp gpu-logs/nsys_7b_stats.log "$L/" 2>/dev/null
    sh bench/gpu.sh profw4 > "$L/profw4_summary.log" 2>&1
    cp gpu-logs/profw4.log "$L/" 2>/dev/null
    grep -E 'w4_gemv|Duration|DRAM Throughput|Achieved Occupancy|Warp Cycles Per Issued|Stall' "$L/profw4_summary.log" |
        head -n 40 | tee -a "$R"
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
    step ncu_block 240 "$NCU" --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
        --section LaunchStats --section SchedulerStats -k regex:gptq_block --launch-skip 64 --launch-count 4 \
        ./build/bench/bench_layers --shape 7b --layers 1
    grep -E 'gptq_block|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size|Block Size|Warp Cycles Per Issued|Issue Slots|Stall' \
        "$L/ncu_block.log" | head -n 60 | tee -a "$R"
    pack_logs
}

# the lazy-block GEMMs in TF32 (GQ_CUDA_GPTQ_TF32=1, written 2026-12-08 without a GPU): test_cuda_gptq
# (run in part_tests) checks its codes; here its speed on the 7B layer beside fp32, and pycoder-5m's
# perplexity with it beside the default's (part_tests' ppl5m)
part_tf32() {
    for v in 0 1; do
        GQ_CUDA_GPTQ_TF32=$v GQ_LOG=debug step "layers_7b_tf32_$v" 120 ./build/bench/bench_layers --shape 7b --layers 2
        grep -E '^  (forward|GPTQ solve|total)' "$L/layers_7b_tf32_$v.log" | sed "s/^/GQ_CUDA_GPTQ_TF32=$v /" | tee -a "$R"
    done
    M=tests/data/pycoder-5m
    GQ_CUDA_GPTQ_TF32=1 step q5m_tf32 120 ./build/gq quantize --model $M --out bench-models/q5m-tf32 \
        --calib calib/python-sitepackages.jsonl --device cuda --force
    step ppl5m_tf32 120 ./build/gq ppl --model bench-models/q5m-tf32 --base $M --text tests/data/text/python-stdlib-eval.txt \
        --device cuda
    grep -E '^(ppl|kld) ' "$L/ppl5m_tf32.log" | sed 's/^/GQ_CUDA_GPTQ_TF32=1 /' | tee -a "$R"
    pack_logs
}

# the GPTQ solve's and the int4 model's tests alone (a short call after a change to either)
part_gptq() {
    for t in test_cuda_gptq test_q4_model; do
        step "$t" 120 "./build/tests/$t"
        grep -E '^FAIL|RESULT' "$L/$t.log" | head -n 20 | tee -a "$R"
    done
    pack_logs
}

# gq eval on the GPU (issue 15): pycoder-5m fp16 against its int4 of the default profile, greedy
# HumanEval and MBPP, then HumanEval with 20 samples a problem; the records in the logs
part_eval() {
    M=tests/data/pycoder-5m Q=bench-models/q5m-quick
    [ -f $Q/config.json ] || step q5m 120 ./build/gq quantize --model $M --out $Q --calib calib/python-sitepackages.jsonl \
        --device cuda --force
    for task in humaneval mbpp; do
        step "eval_${task}" 200 ./build/gq eval --task $task --model $Q --base $M --device cuda --batch 128 \
            --out "$L/eval_${task}.jsonl" --force
        grep -E '^eval: |generated|ran [0-9]+ programs' "$L/eval_${task}.log" | tee -a "$R"
    done
    step eval_humaneval_k10 240 ./build/gq eval --task humaneval --model $Q --base $M --device cuda --batch 256 \
        --n-samples 20 --temperature 0.8 --top-p 0.95 --k 1,10 --out "$L/eval_humaneval_k10.jsonl" --force
    grep -E '^eval: |generated|ran [0-9]+ programs' "$L/eval_humaneval_k10.log" | tee -a "$R"
    pack_logs
}

for p in ${PARTS:-tests w4 layers decode e2e}; do "part_$p"; done
