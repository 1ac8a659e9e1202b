#!/bin/sh
# bench/accuracy.sh MODEL DEVICE [OUTDIR] -- the acceptance settings of docs/accuracy.md on one
# model and device: fp16 perplexity, then GPTQ int4 g128 sym, asym, asym act-order + static
# groups, int3 g128 asym, and RTN int4 asym/sym, each quantized with the 128 x 2048 concat
# windows of calib/python-sitepackages.jsonl and evaluated on all windows of
# tests/data/text/python-stdlib-eval.txt. Prints a table (and the quantize timings).
set -u
M=$1
DEV=$2
W=${3:-bench-models/accuracy-$DEV}
GQ=${GQ_BIN:-./build/gq}
TEXT=tests/data/text/python-stdlib-eval.txt
mkdir -p "$W"
ppl() { $GQ ppl --model "$1" --text $TEXT --device $DEV 2>/dev/null | awk '/^ppl =/ {print $3}'; }
printf '%-34s %10s %12s\n' "setting" "ppl" "quantize s"
printf '%-34s %10s %12s\n' "fp16" "$(ppl "$M")" "-"
for cfg in "gptq_sym:" "gptq_asym:--asym" "gptq_asym_actorder_static:--asym --act-order --static-groups" \
    "gptq_int3_asym:--asym --bits 3" "rtn_asym:--method rtn --asym" "rtn_sym:--method rtn"; do
    name=${cfg%%:*}
    opts=${cfg#*:}
    t0=$(date +%s)
    $GQ quantize --model "$M" --out "$W/$name" --device $DEV --force $opts > "$W/$name.log" 2>&1 || {
        echo "$name: quantize failed"; tail -3 "$W/$name.log"; continue; }
    t1=$(date +%s)
    printf '%-34s %10s %12s\n' "$name" "$(ppl "$W/$name")" "$((t1 - t0))"
done
