#!/bin/sh
# bench/fidelity.sh -- the "Fidelity" measurement of docs/accuracy.md on a GPU machine: int4 group-128
# symmetric GPTQ (plain v1 output) with each group-parameter method, on pycoder-5m and pycoder-30m, over
# three calibration draws; quantized and evaluated on CUDA. Prints one line per run (method, model, draw,
# perplexity, quantize seconds), then the mean and range of each method per model, and the targets.
#
#   sh bench/fidelity.sh                 all methods, both models, draws 0 1 2
#   MODELS=m30 DRAWS=0 sh bench/fidelity.sh
#
# Methods (gq quantize options):
#   ref          (none)                                  min-max scales, no act-order: the reference's setting
#   ao_sg        --act-order --static-groups             min-max, act-order with static groups (trivial g_idx)
#   mse          --clip mse                              scale search, sum |q(x) - x|^2.4
#   mse_h        --clip mse-h                            the same weighted by diag(H)
#   mse_ao_sg    --clip mse --act-order --static-groups
#   mse_h_ao_sg  --clip mse-h --act-order --static-groups
# Calibration draws: 128 concat windows of 2048 tokens of calib/python-sitepackages.jsonl (its 144 records
# make 248 such windows). gq has no sampling seed for the windows: draw 0 is the file itself (the
# protocol's windows, those of the reference figures); draw d > 0 is the same records in a shuffled order
# (Python's random.Random(d).shuffle), so its first 128 windows are another subset, in another order.
# Perplexity: all 155 windows of 2048 tokens of tests/data/text/python-stdlib-eval.txt.
# Precision: PREC (default auto: fp16 activations on CUDA, as the reference), used for quantize and ppl.
#
# 36 quantize and 36 ppl runs (+ 2 fp16 ppl); each takes a few seconds on an H100 (most of it process start and
# loading), so the whole run is about 5 minutes. Logs in $LOGS; the table also in $OUT/fidelity.txt.
set -u
OUT=${OUT:-gpu-logs}
LOGS=${LOGS:-gpu-logs/fidelity}
mkdir -p "$OUT" "$LOGS" bench-models
R="$OUT/fidelity.txt"
: > "$R"
GQ=${GQ_BIN:-./build/gq}
DEV=${DEV:-cuda}
PREC=${PREC:-auto}
TEXT=tests/data/text/python-stdlib-eval.txt
CALIB=calib/python-sitepackages.jsonl
MODELS=${MODELS:-"m5 m30"}
DRAWS=${DRAWS:-"0 1 2"}
METHODS=${METHODS:-"ref: ao_sg:--act-order|--static-groups mse:--clip|mse mse_h:--clip|mse-h mse_ao_sg:--clip|mse|--act-order|--static-groups mse_h_ao_sg:--clip|mse-h|--act-order|--static-groups"}
say() { echo "$*" | tee -a "$R"; }

# Build (incremental) with CUDA, the libraries as bench/gpu.sh finds them; SKIP_BUILD=1 uses $GQ as it is.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    MAKEVARS="CUDA=1"
    if [ ! -f /usr/include/jansson.h ] || [ ! -f /usr/include/pcre2.h ] || [ ! -f /usr/include/lapacke.h ]; then
        if [ -f .gqdeps.tar.xz ]; then
            [ -d .gqdeps ] || { mkdir -p .gqdeps && tar xJf .gqdeps.tar.xz -C .gqdeps; }
            MAKEVARS="CUDA=1 DEPS=.gqdeps/usr"
        fi
    fi
    # shellcheck disable=SC2086
    make -j16 $MAKEVARS all > "$LOGS/build.log" 2>&1 || { tail -n 40 "$LOGS/build.log"; exit 1; }
fi
"$GQ" quantize --help 2>&1 | grep -q -- '--clip' || { echo "$GQ has no --clip option: rebuild"; exit 1; }
"$GQ" --version 2>&1 | grep -qi cuda || echo "note: $GQ --version does not mention CUDA"

model_dir() {
    case $1 in
    m5) echo tests/data/pycoder-5m ;;
    m30) echo bench-models/pycoder-30m ;;
    esac
}
if echo " $MODELS " | grep -q ' m30 '; then
    [ -f bench-models/pycoder-30m/config.json ] || python3 bench/modelpack.py unpack .m30pack bench-models/pycoder-30m ||
        { echo "pycoder-30m: unpack failed"; exit 1; }
fi

# the calibration draws
for d in $DRAWS; do
    [ "$d" = 0 ] && continue
    python3 -c "
import random, sys
lines = open('$CALIB', encoding='utf-8').read().splitlines(keepends=True)
random.Random($d).shuffle(lines)
open('bench-models/calib-draw$d.jsonl', 'w', encoding='utf-8').writelines(lines)
" || { echo "draw $d: could not write bench-models/calib-draw$d.jsonl"; exit 1; }
done
calib_of() { if [ "$1" = 0 ]; then echo $CALIB; else echo "bench-models/calib-draw$1.jsonl"; fi; }

ppl_of() { grep -h '^ppl = ' "$1" | awk '{print $3}'; }

say "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1); precision $PREC; $(date -u +%F)"
for m in $MODELS; do
    M=$(model_dir "$m")
    timeout 300 "$GQ" ppl --model "$M" --text $TEXT --device "$DEV" --precision "$PREC" > "$LOGS/${m}_fp16.log" 2>&1
    say "$(printf '%-12s %-4s %-4s %9s' fp16 "$m" - "$(ppl_of "$LOGS/${m}_fp16.log")")"
done
printf '%-12s %-4s %-4s %9s %7s\n' method model draw ppl quant_s | tee -a "$R"
T="$LOGS/runs.tsv"
: > "$T"
for m in $MODELS; do
    M=$(model_dir "$m")
    for d in $DRAWS; do
        C=$(calib_of "$d")
        for cfg in $METHODS; do
            name=${cfg%%:*}
            opts=$(echo "${cfg#*:}" | tr '|' ' ')
            q="bench-models/fid-$m-$name-$d"
            t0=$(date +%s.%N)
            # shellcheck disable=SC2086
            timeout 300 "$GQ" quantize --model "$M" --out "$q" --calib "$C" --device "$DEV" --precision "$PREC" --force \
                $opts > "$LOGS/q_${m}_${name}_$d.log" 2>&1
            rc=$?
            t1=$(date +%s.%N)
            p=NA
            if [ $rc -eq 0 ]; then
                timeout 300 "$GQ" ppl --model "$q" --text $TEXT --device "$DEV" --precision "$PREC" \
                    > "$LOGS/p_${m}_${name}_$d.log" 2>&1
                p=$(ppl_of "$LOGS/p_${m}_${name}_$d.log")
                [ -n "$p" ] || p=NA
            else
                echo "  $m $name draw $d: quantize failed (rc $rc):" | tee -a "$R"
                tail -n 3 "$LOGS/q_${m}_${name}_$d.log" | tee -a "$R"
            fi
            rm -rf "$q"
            qs=$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")
            printf '%-12s %-4s %-4s %9s %7s\n' "$name" "$m" "$d" "$p" "$qs" | tee -a "$R"
            printf '%s\t%s\t%s\t%s\n' "$name" "$m" "$d" "$p" >> "$T"
        done
    done
done

say ""
say "per method and model over the draws (draw 0 = the protocol's windows)"
printf '%-12s %-4s %3s %9s %9s %9s %9s\n' method model n mean min max draw0 | tee -a "$R"
awk -F'\t' '$4 != "NA" {
        k = $1 "\t" $2
        if (!(k in n)) { order[++no] = k; mn[k] = $4; mx[k] = $4 }
        n[k]++; s[k] += $4
        if ($4 < mn[k]) mn[k] = $4
        if ($4 > mx[k]) mx[k] = $4
        if ($3 == 0) d0[k] = $4
    }
    END {
        for (i = 1; i <= no; i++) {
            k = order[i]; split(k, a, "\t")
            printf "%-12s %-4s %3d %9.4f %9.4f %9.4f %9s\n", a[1], a[2], n[k], s[k] / n[k], mn[k], mx[k],
                (k in d0) ? d0[k] : "-"
        }
    }' "$T" | tee -a "$R"
say ""
say "targets (int4 g128 sym, draw 0): pycoder-30m <= 8.8429 (reference 8.8563), pycoder-5m <= 11.5072 (reference 11.5873)"
