#!/bin/sh
# bench/cpu_spread.sh [OUTDIR] -- how far the OpenBLAS kernel set and the thread count move the
# acceptance figures of tests/test_quantize.c (docs/testing.md, "Numbers that hold on any CPU").
#
# For every OpenBLAS core type in $CORETYPES and thread count in $THREADS, each setting of the
# acceptance table is quantized (`gq quantize --threads N`, the test's defaults: calibration
# calib/python-sitepackages.jsonl, 128 x 2048 concat windows) and evaluated on all 155 windows of
# tests/data/text/python-stdlib-eval.txt (`gq ppl --threads N`). One process per run, the core type
# forced with OPENBLAS_CORETYPE (OpenBLAS's DYNAMIC_ARCH build: every kernel set the CPU can run),
# OMP_NUM_THREADS set to N as well, OPENBLAS_L2_SIZE unset unless $L2 is given.
#
#   CORETYPES  default "Haswell SkylakeX Zen Cooperlake" (Cooperlake is what OpenBLAS 0.3.21
#              picks by itself on an AVX-512-BF16 Zen 4; a CPU runs only the sets it supports)
#   THREADS    default "1 2"
#   CASES      default all eight: fp16 (the checkpoint itself, no quantization) default (gq's default
#              profile: int4 g128 sym, --clip mse, act-order, static groups) gptq_sym gptq_asym gptq_ao_sg
#              gptq_int3 (these four with min-max scales, the reference's; sym, asym and int3 in column order with
#              dynamic groups, as the test runs them) rtn_asym rtn_sym; also
#              rtn_int3 (RTN int3 g128 asym)
#   GQ_BIN     default ./build/gq (copy it first if the build may change during the run)
#
# Prints one line per run as it finishes (also appended to OUTDIR/runs.tsv), then a table per
# setting: min, max, spread (max - min, and relative to min). 20-50 minutes on 2 cores (load).
set -u
W=${1:-${TMPDIR:-/tmp}/gq-cpu-spread}
GQ=${GQ_BIN:-./build/gq}
CORETYPES=${CORETYPES:-"Haswell SkylakeX Zen Cooperlake"}
THREADS=${THREADS:-"1 2"}
CASES=${CASES:-"fp16 default gptq_sym gptq_asym gptq_ao_sg gptq_int3 rtn_asym rtn_sym"}
TEXT=tests/data/text/python-stdlib-eval.txt
MODEL=tests/data/pycoder-5m
mkdir -p "$W"
runs=$W/runs.tsv
: > "$runs"

opts_of() {
    case $1 in
    default) echo "" ;;
    gptq_sym) echo "--clip minmax --no-act-order --no-static-groups" ;;
    gptq_asym) echo "--asym --clip minmax --no-act-order --no-static-groups" ;;
    gptq_ao_sg) echo "--asym --clip minmax --act-order --static-groups" ;;
    gptq_int3) echo "--asym --bits 3 --clip minmax --no-act-order --no-static-groups" ;;
    rtn_asym) echo "--method rtn --asym" ;;
    rtn_sym) echo "--method rtn" ;;
    rtn_int3) echo "--method rtn --asym --bits 3" ;;
    *) echo "unknown case $1" >&2; exit 2 ;;
    esac
}

# run CORETYPE THREADS CMD...: the command with the BLAS environment of one measurement
run() {
    ct=$1 th=$2
    shift 2
    if [ -n "${L2:-}" ]; then
        env OPENBLAS_CORETYPE="$ct" OPENBLAS_L2_SIZE="$L2" OMP_NUM_THREADS="$th" "$@"
    else
        env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE="$ct" OMP_NUM_THREADS="$th" "$@"
    fi
}

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $GQ; L2=${L2:-unset}; $(date -u +%F)"
printf 'case\tcoretype\tthreads\tppl\tquantize_s\tblas\n'
for ct in $CORETYPES; do
    for th in $THREADS; do
        for c in $CASES; do
            out=$W/$c-$ct-$th
            t0=$(date +%s)
            eval_model=$out
            if [ "$c" = fp16 ]; then
                eval_model=$MODEL
            # shellcheck disable=SC2046
            elif ! run "$ct" "$th" "$GQ" quantize --model $MODEL --out "$out" --threads "$th" --force $(opts_of "$c") \
                > "$out.log" 2>&1; then
                echo "$c $ct $th: quantize failed (see $out.log)"
                continue
            fi
            t1=$(date +%s)
            p=$(run "$ct" "$th" "$GQ" ppl --model "$eval_model" --text $TEXT --threads "$th" 2> "$out.ppl.log" |
                awk '/^ppl =/ {print $3}')
            blas=$(grep -o 'OpenBLAS [A-Za-z0-9]*' "$out.ppl.log" | head -n 1)
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$ct" "$th" "${p:-FAILED}" "$((t1 - t0))" "$blas" | tee -a "$runs"
            rm -rf "$out"
        done
    done
done

echo
echo "setting | min | max | spread | spread / min"
for c in $CASES; do
    awk -F'\t' -v c="$c" '$1 == c && $4 != "FAILED" {
        v = $4 + 0; n++
        if (n == 1 || v < lo) lo = v
        if (n == 1 || v > hi) hi = v
    } END { if (n) printf "%s | %.4f | %.4f | %.4f | %.3f%% (%d runs)\n", c, lo, hi, hi - lo, 100 * (hi - lo) / lo, n }' "$runs"
done
