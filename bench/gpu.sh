#!/bin/sh
# bench/gpu.sh -- everything gq needs to check on a GPU machine, in one call:
# build with CUDA, the CUDA tests, the layer benchmark, pycoder-30m on the GPU
# (perplexity, quantization in every acceptance setting), and a synthetic
# Llama-2-7B end to end. Logs go to $OUT (default gpu-logs/); a summary is
# printed last.
#
#   sh bench/gpu.sh [STEP ...]     steps: build test unit layers layersf32 moe nopool kld m30 m30f32 e2e e2e13 gen stream calib eval speed decode profmoe eval5m profw4 nsysmoe layersdp
#                                         w4a16 (the int4 kernel's test and benchmark)
#                                  (default: build test layers m30 e2e speed; m30f32 = m30 with --precision fp32)
#
# pycoder-30m travels packed (bench/modelpack.py) in .m30pack/ (git-ignored,
# named in the device tool's carry); it is unpacked into bench-models/. The pack (52 MB) and the
# repository (~38 MB) exceed one call's 64 MiB: split `tar cf - .m30pack` into three git-ignored
# folders (.m30a/pa 20 MB, .m30b/pb, .m30c/pc), carry one per call on the same warm machine
# (30 s between calls), each call copying its part to /tmp/m30, and in the third
# `cat /tmp/m30/pa /tmp/m30/pb /tmp/m30/pc | tar xf -` (from the repository root) restores
# .m30pack (tokenizer.json: copy tests/data/pycoder-5m's). Carry .gqdeps.tar.xz in every call:
# a call that does not carry it loses the unpacked libraries.
set -u
OUT=${OUT:-gpu-logs}
LOGS=gpu-logs          # every log; $OUT gets logs.tar.gz + summary.txt (the device tool brings back 8 files)
mkdir -p "$OUT" "$LOGS"
SUMMARY="$LOGS/summary.txt"
: > "$SUMMARY"
GQ=./build/gq
TEXT=tests/data/text/python-stdlib-eval.txt
CALIB=calib/python-sitepackages.jsonl
say() { echo "$*" | tee -a "$SUMMARY"; }
# run NAME TIMEOUT CMD...: run with a time limit, log to $OUT/NAME.log
run() {
    _name=$1 _lim=$2
    shift 2
    _t0=$(date +%s.%N)
    timeout "$_lim" "$@" > "$LOGS/$_name.log" 2>&1
    _rc=$?
    _t1=$(date +%s.%N)
    say "$(printf '%-28s rc=%-3d %7.1f s' "$_name" "$_rc" "$(awk "BEGIN{print $_t1 - $_t0}")")"
    return $_rc
}
ppl_of() { grep -h '^ppl = ' "$LOGS/$1.log" | awk '{print $3}'; }

# Libraries: the machine's own, else the Debian packages unpacked from
# .gqdeps.tar.xz (made by bench/gpu-deps.sh, carried with the call).
MAKEVARS="CUDA=1"
if [ ! -f /usr/include/jansson.h ] || [ ! -f /usr/include/pcre2.h ] || [ ! -f /usr/include/lapacke.h ]; then
    if [ -f .gqdeps.tar.xz ]; then
        [ -d .gqdeps ] || { mkdir -p .gqdeps && tar xJf .gqdeps.tar.xz -C .gqdeps; }
        MAKEVARS="CUDA=1 DEPS=.gqdeps/usr"
    fi
fi

# Nsight Compute's binary (on the PATH, else the toolkit's)
ncu_path() { command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1; }

step_build() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$SUMMARY"
    say "make variables: $MAKEVARS; $(nproc) cores; $(. /etc/os-release && echo "$PRETTY_NAME")"
    run build 400 make -j16 $MAKEVARS all bench build/tests/test_cuda build/tests/test_cuda_family build/tests/test_cuda_gptq build/tests/test_families build/tests/test_cuda_w4a16 build/tests/test_w4a16_ref build/tests/test_q4_model build/tests/test_qlayer_chunk ||
        { tail -n 60 "$LOGS/build.log"; exit 1; }
}

step_test() {
    run test_cuda 300 ./build/tests/test_cuda
    grep -E '^(FAIL|SKIP)|RESULT|rel err|ppl |timing' "$LOGS/test_cuda.log" | head -n 80
    run test_cuda_family 300 ./build/tests/test_cuda_family
    grep -E '^(FAIL|SKIP)|RESULT' "$LOGS/test_cuda_family.log" | head -n 40
    run test_cuda_gptq 300 ./build/tests/test_cuda_gptq
    grep -E '^(FAIL|SKIP)|RESULT|codes equal' "$LOGS/test_cuda_gptq.log" | head -n 80
    # the families on the GPU, fp16 and fp32 passes: each pass's table of measured errors and
    # bounds, the routing / greedy differences allowed at near ties ("note:"), then the failures
    run test_families 300 env GQ_TEST_DEVICE=cuda ./build/tests/test_families
    grep -E '^note: |RESULT' "$LOGS/test_families.log" | tee -a "$SUMMARY"
    grep -E '^(FAIL|SKIP)' "$LOGS/test_families.log" | head -n 60
    # chunks and the MoE expert solves on several streams, on the GPU (fp32)
    run test_qlayer_chunk 300 env GQ_TEST_DEVICE=cuda ./build/tests/test_qlayer_chunk
    grep -E '^(FAIL|SKIP)|RESULT' "$LOGS/test_qlayer_chunk.log" | head -n 40
}

step_unit() {
    GQ_TEST_QUICK=1 run unit_tests 300 make -j16 $MAKEVARS test
    tail -n 3 "$LOGS/unit_tests.log"
}

step_layers() {
    for s in 7b 34b 70b; do
        GQ_LOG=debug run "layers_$s" 240 ./build/bench/bench_layers --shape "$s" --layers 3
        grep -A 8 "^$s on" "$LOGS/layers_$s.log" | tee -a "$SUMMARY"
    done
}

# MoE layers (Mixtral-8x7B, Qwen3-30B-A3B shapes). Without GQ_LOG=debug: debug times every Hessian
# update with a device sync around it, 2048 syncs per Qwen3-30B-A3B layer (MOE_DEBUG=1: with it)
step_moe() {
    for s in mixtral qwen3moe; do
        GQ_LOG=$([ "${MOE_DEBUG:-0}" = 1 ] && echo debug || echo info) run "layers_$s" 300 \
            ./build/bench/bench_layers --shape "$s" --layers 3
        grep -A 8 "^$s on" "$LOGS/layers_$s.log" | tee -a "$SUMMARY"
    done
}

# the same MoE layers with cudaMalloc / cudaFree per buffer (GQ_CUDA_POOL=0): what the pool saves
step_nopool() {
    for s in qwen3moe 7b; do
        GQ_CUDA_POOL=0 run "layers_${s}_nopool" 300 ./build/bench/bench_layers --shape "$s" --layers 3
        grep -A 8 "^$s on" "$LOGS/layers_${s}_nopool.log" | tee -a "$SUMMARY"
    done
}

# gq ppl --base on the GPU: pycoder-5m against its GPTQ int4 (the KL figures of docs/accuracy.md)
step_kld() {
    M=tests/data/pycoder-5m
    mkdir -p bench-models
    run kld_q5m 120 $GQ quantize --model $M --out bench-models/q5m-sym --calib $CALIB --device cuda --force
    run kld_5m 120 $GQ ppl --model bench-models/q5m-sym --base $M --text $TEXT --device cuda
    grep -E '^(ppl|base ppl|kld) ' "$LOGS/kld_5m.log" | tee -a "$SUMMARY"
    # the KL golden (tests/data/kld/golden.json, from gq's logits) recomputed by transformers from the
    # two checkpoints alone: RTN int4 g128 sym with min-max scales, the test's checkpoint
    run kld_qrtn 120 $GQ quantize --model $M --out bench-models/q5m-rtn --method rtn --device cpu --force
    run kld_torch 300 python3 tests/ref/gen_kld.py torch --base $M --model bench-models/q5m-rtn \
        --check tests/data/kld/golden.json
    tail -n 12 "$LOGS/kld_torch.log" | tee -a "$SUMMARY"
}

# bench-models/pycoder-30m from .m30pack where it is not there yet (WHAT names the step on failure)
need_m30() {
    [ -f bench-models/pycoder-30m/config.json ] || python3 bench/modelpack.py unpack .m30pack bench-models/pycoder-30m ||
        { say "$1: unpack failed"; return 1; }
}

step_m30() {
    M=bench-models/pycoder-30m
    P=${PREC:-auto}
    S=$([ "$P" = auto ] || echo "_$P")
    need_m30 m30 || return
    run m30_fp16_ppl_cuda$S 120 $GQ ppl --model $M --text $TEXT --device cuda --precision $P
    say "  fp16 ppl (cuda, precision $P): $(ppl_of m30_fp16_ppl_cuda$S)   [transformers fp16: 8.7891]"
    for cfg in "sym:" "asym:--asym" "asym_ao_sg:--asym --act-order --static-groups" "int3_asym:--asym --bits 3" \
        "rtn_sym:--method rtn" "rtn_asym:--method rtn --asym" "asym_ao:--asym --act-order"; do
        name=${cfg%%:*}$S
        opts=${cfg#*:}
        run "m30_q_$name" 300 $GQ quantize --model $M --out "bench-models/q30-$name" --calib $CALIB --device cuda \
            --precision $P --force $opts
        grep -E '^done in' "$LOGS/m30_q_$name.log" | tee -a "$SUMMARY"
        run "m30_ppl_$name" 120 $GQ ppl --model "bench-models/q30-$name" --text $TEXT --device cuda --precision $P
        say "  $name: ppl $(ppl_of m30_ppl_$name)"
    done
}

step_m30f32() { PREC=fp32 step_m30; }

# --precision fp32 on a full-size Llama-2-7B layer (the cost of the CPU's arithmetic on the GPU)
step_layersf32() {
    GQ_LOG=debug run layers_7b_fp32 400 ./build/bench/bench_layers --shape 7b --layers 2 --precision fp32
    grep -A 8 "^7b on" "$LOGS/layers_7b_fp32.log" | tee -a "$SUMMARY"
}

# synthetic checkpoint of SHAPE (bench/make_synth_model.py), disk to disk on the GPU; LIM seconds
# for each of making and quantizing it
e2e_shape() {
    shape=$1 lim=$2 S=bench-models/synth-$1
    [ -f "$S/tokenizer.json" ] || run "make_synth_$shape" "$lim" python3 bench/make_synth_model.py --shape "$shape" \
        --tokenizer tests/data/pycoder-5m "$S"
    sync
    run "e2e_$shape" "$lim" $GQ quantize --model "$S" --out "bench-models/q-synth-$shape" --calib $CALIB --device cuda \
        --force
    grep -E '^(done in|layer (1|2|16|32|40)/)' "$LOGS/e2e_$shape.log" | tee -a "$SUMMARY"
}

step_e2e() { e2e_shape 7b 300; }

# the Llama-2-13B shape (issue 14's second figure; 26 GB of synthetic fp16 weights; its output removed)
step_e2e13() {
    e2e_shape 13b 400
    rm -rf bench-models/q-synth-13b
}

step_gen() {
    M=bench-models/pycoder-30m
    need_m30 gen || return
    run bench_generate 200 ./build/bench/bench_generate --device cuda --models $M --batches 1,16,128 --new 256 --reps 1
    grep -E '^\|' "$LOGS/bench_generate.log" | tee -a "$SUMMARY"
    run calib_128x512 200 $GQ calib --model $M --questions calib/questions/humaneval-mbpp.jsonl.gz --n 128 --batch 128 \
        --max-new-tokens 512 --device cuda --out bench-models/he128.jsonl --force
    grep -E '^generated' "$LOGS/calib_128x512.log" | tee -a "$SUMMARY"
}

# activations streamed from host memory (forced): bitwise the resident run, and its cost
step_stream() {
    M=bench-models/pycoder-30m
    need_m30 stream || return
    [ -f bench-models/q30-sym/config.json ] || run m30_q_sym 300 $GQ quantize --model $M --out bench-models/q30-sym \
        --calib $CALIB --device cuda --force
    GQ_STREAM_ACTIVATIONS=1 run m30_q_sym_stream 300 $GQ quantize --model $M --out bench-models/q30-sym-stream \
        --calib $CALIB --device cuda --force
    if cmp -s bench-models/q30-sym/model.safetensors bench-models/q30-sym-stream/model.safetensors; then
        say "  streamed activations: output bitwise equal to the resident run"
    else
        say "  streamed activations: OUTPUT DIFFERS from the resident run"
    fi
    GQ_STREAM_ACTIVATIONS=1 run layers_7b_stream 240 ./build/bench/bench_layers --shape 7b --layers 3
    grep -A 5 "^7b on" "$LOGS/layers_7b_stream.log" | tee -a "$SUMMARY"
}

step_w4a16() {
    run test_cuda_w4a16 300 ./build/tests/test_cuda_w4a16
    grep -E '^(FAIL|SKIP)|RESULT' "$LOGS/test_cuda_w4a16.log" | head -n 40
    run test_q4_model 300 ./build/tests/test_q4_model
    grep -E '^(FAIL|SKIP)|RESULT|ppl' "$LOGS/test_q4_model.log" | head -n 20
    run test_w4a16_ref 120 ./build/tests/test_w4a16_ref
    grep -E '^(FAIL|SKIP)|RESULT' "$LOGS/test_w4a16_ref.log" | head -n 10
    run bench_w4a16 300 ./build/bench/bench_w4a16
    grep -E '^\||bandwidth|floor' "$LOGS/bench_w4a16.log" | tee -a "$SUMMARY"
    run bench_w4a16_prefill 300 ./build/bench/bench_w4a16 --T 131072 --shapes 4096x4096,4096x11008,11008x4096
    grep -E '^\|' "$LOGS/bench_w4a16_prefill.log" | tee -a "$SUMMARY"
    run bench_w4a16_ao 200 ./build/bench/bench_w4a16 --act-order --T 1,8
    grep -E '^\|' "$LOGS/bench_w4a16_ao.log" | tee -a "$SUMMARY"
}

# gq eval on the GPU (issue 15): MODEL fp16 against its int4 (gq's default profile, quantized here
# into Q), greedy pass@1 and sampled pass@10 (20 samples, T 0.8, top-p 0.95) on HumanEval and MBPP,
# --base beside; logs named TAG_*
eval_pair() {
    M=$1 Q=$2 TAG=$3
    [ -f "$Q/config.json" ] || run "${TAG}_quantize" 300 $GQ quantize --model "$M" --out "$Q" --calib $CALIB \
        --device cuda --force
    for task in humaneval mbpp; do
        run "${TAG}_${task}_greedy" 600 $GQ eval --task $task --model "$Q" --base "$M" --device cuda \
            --batch 128 --out "$LOGS/${TAG}_${task}_greedy.jsonl" --force
        grep -E '^eval: ' "$LOGS/${TAG}_${task}_greedy.log" | tee -a "$SUMMARY"
        run "${TAG}_${task}_k10" 600 $GQ eval --task $task --model "$Q" --base "$M" --device cuda \
            --batch 256 --n-samples 20 --temperature 0.8 --top-p 0.95 --k 1,10 --out "$LOGS/${TAG}_${task}_k10.jsonl" \
            --force
        grep -E '^eval: ' "$LOGS/${TAG}_${task}_k10.log" | tee -a "$SUMMARY"
    done
}

# pycoder-30m (carried in parts, see the top)
step_eval() {
    need_m30 eval || return
    eval_pair bench-models/pycoder-30m bench-models/q30-def eval
}

# batch-1 decode of the synthetic 7B, int4 and fp16: the decode kernels' tests, the table op by op
# and recorded (GQ_CUDA_GRAPH=1), then each step's GPU time by kernel (bench/profile_decode.sh, ncu)
step_decode() {
    run test_cuda_dec 300 ./build/tests/test_cuda
    grep -E '^(FAIL|SKIP)|RESULT' "$LOGS/test_cuda_dec.log" | head -n 20 | tee -a "$SUMMARY"
    run test_q4_model_dec 300 ./build/tests/test_q4_model
    grep -E '^(FAIL|SKIP)|RESULT' "$LOGS/test_q4_model_dec.log" | head -n 20 | tee -a "$SUMMARY"
    # 0: op by op; a: the decode attention of before 2026-12-07's 16-byte-load kernel (GQ_CUDA_ATTN=1), op
    # by op; 1: recorded (the default)
    for g in ${DEC_MODES:-0 a 1}; do
        if [ $g = a ]; then set -- env GQ_CUDA_ATTN=1 GQ_CUDA_GRAPH=0; else set -- env GQ_CUDA_GRAPH=$g; fi
        ROWS="${DEC_ROWS:-7b:int4:1 7b:fp16:1}" NEW=${DEC_NEW:-256} BUDGET_S=200 OUT="$OUT/dec$g" \
            run "decode_graph$g" 300 "$@" sh bench/decode_table.sh
        grep -E '^\| 7b|^\| 34b|FAIL|PASS|replayed' "$LOGS/decode_graph$g.log" | tee -a "$SUMMARY"
    done
    for w in ${DEC_PROF:-int4 fp16}; do
        [ -d "bench-models/dt-7b-$w" ] || continue
        OUT=$LOGS run "prof_$w" 300 sh bench/profile_decode.sh "bench-models/dt-7b-$w" "7b-$w"
        grep -E '^\||kernels profiled|ncu' "$LOGS/prof_$w.log" | head -n 16 | tee -a "$SUMMARY"
    done
}

# one MoE layer (Qwen3-30B-A3B shape; PROF_SHAPE) on 16 x 2048 tokens (one chunk), its first
# PROF_COUNT kernels timed by ncu (the whole layer at 128 x 2048, about 10 ms of ncu a kernel, did not
# finish in 230 s), by kernel (bench/ncu_summary.py)
step_profmoe() {
    sh_=${PROF_SHAPE:-qwen3moe}
    run "profmoe_$sh_" 300 "$(ncu_path)" --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
        --print-units base --launch-count "${PROF_COUNT:-12000}" ./build/bench/bench_layers --shape "$sh_" \
        --layers 1 --nsamples 16
    python3 bench/ncu_summary.py "$LOGS/profmoe_$sh_.log" | head -n 40 | tee -a "$SUMMARY"
}

# the Qwen3-30B-A3B layer under Nsight Systems: GPU time by kernel over the whole layer, and the
# host API time (synchronisations, launches), where ncu's sample covered one chunk only
nsys_path() { command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -n 1; }
step_nsysmoe() {
    NS=$(nsys_path)
    [ -n "$NS" ] || { say "nsysmoe: no nsys on this machine"; return; }
    sh_=${PROF_SHAPE:-qwen3moe}
    rm -f "$LOGS/nsys_$sh_.nsys-rep" "$LOGS/nsys_$sh_.sqlite"
    run "nsys_$sh_" 300 "$NS" profile -t cuda -s none --cpuctxsw none -o "$LOGS/nsys_$sh_" ./build/bench/bench_layers \
        --shape "$sh_" --layers 1
    run "nsys_${sh_}_stats" 200 "$NS" stats -q -r cuda_gpu_kern_sum,cuda_api_sum,cuda_gpu_mem_time_sum -f csv \
        "$LOGS/nsys_$sh_.nsys-rep"
    python3 bench/nsys_summary.py "$LOGS/nsys_${sh_}_stats.log" | tee -a "$SUMMARY"
}

# several GPUs (issue 17): the 70B and Qwen3-30B-A3B layers on 1, 2, 4, 8 of this machine's GPUs (as many as
# it has), then bench/results' table; on a one-GPU machine the one row
step_layersdp() {
    ng=$(nvidia-smi -L | wc -l)
    for n in 1 2 4 8; do
        [ "$n" -le "$ng" ] || break
        devs=$(seq -s, 0 $((n - 1)))
        for sh_ in 70b qwen3moe; do
            run "layersdp_${sh_}_$n" 300 ./build/bench/bench_layers --shape "$sh_" --layers 2 --device "cuda:$devs"
            grep -E "^$sh_ on|devices:|total per layer|forward|solve" "$LOGS/layersdp_${sh_}_$n.log" | sed "s/^/$n GPU: /" |
                tee -a "$SUMMARY"
        done
    done
}

# the bundled pycoder-5m (no model to carry): docs/eval.md's GPU rows of the bundled model
step_eval5m() { eval_pair tests/data/pycoder-5m bench-models/q5-def eval5; }

# the W4A16 decode GEMV at batch 1 on the 7B's shapes (q|k|v, o, gate|up, down), ncu's speed-of-light,
# memory and warp-stall sections for a few launches of each: why it runs at 2-3x its copy floor
step_profw4() {
    run profw4 300 "$(ncu_path)" --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy --section LaunchStats -k regex:w4_gemv \
        --launch-count 24 ./build/bench/bench_w4a16 --T 1 --reps 3 --shapes 4096x12288,4096x4096,4096x22016,11008x4096
    grep -E 'w4_gemv|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Block Size|Grid Size|Stall|Warp Cycles Per Issued' \
        "$LOGS/profw4.log" | head -n 120 | tee -a "$SUMMARY"
}

# bench/results/speed-h100.json's figures from this machine's logs (run after layers, moe, e2e and
# bench/peer.sh in the same or earlier calls on the same machine)
step_speed() {
    PJ=$OUT/peer.json
    [ -f "$PJ" ] || PJ=gpu-logs/peer/peer.json
    python3 bench/speed_json.py "$LOGS" --peer "$PJ" --out "$OUT/speed-h100.json" > /dev/null &&
        say "speed: $OUT/speed-h100.json"
}

step_calib() {
    LOGS=$LOGS sh bench/calib_experiment.sh
    cat "$LOGS/calib_experiment.txt" >> "$SUMMARY"
    cp "$LOGS/pycoder-30m-selfgen.jsonl.gz" "$OUT/" 2>/dev/null
}

[ $# -eq 0 ] && set -- build test layers m30 e2e speed
for s in "$@"; do
    "step_$s"
    cp "$SUMMARY" "$OUT/summary.txt" # what a timed-out call still brings back
done
cp "$SUMMARY" "$OUT/summary.txt"
tar czf "$OUT/logs.tar.gz" "$LOGS"
echo "==== summary"
cat "$SUMMARY"
