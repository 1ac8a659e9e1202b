#!/bin/sh
# bench/fidelity.sh -- the "Fidelity" measurement of docs/accuracy.md on a GPU machine: int4 group-128
# symmetric GPTQ (plain v1 output) with each group-parameter method, on pycoder-5m and pycoder-30m, over
# three calibration draws and two arithmetics (CUDA fp16 and fp32); quantized and evaluated on CUDA. Prints
# one line per run (method, model, precision, draw, perplexity, KL divergence from the fp16 model, top-1
# agreement, quantize seconds), then the mean and range of each method per model and precision.
#
#   sh bench/fidelity.sh                 all methods, both models, draws 0 1 2, precisions auto fp32
#   MODELS=m30 DRAWS=0 PRECS=auto sh bench/fidelity.sh
#
# Methods (gq quantize options; every one spelled out, so the table does not depend on gq's defaults):
#   ref          --clip minmax --no-act-order             min-max scales in column order: the GPTQ paper's setting
#   ao_sg        --clip minmax --act-order --static-groups
#   mse          --clip mse --no-act-order                 scale search, sum |q(x) - x|^2.4
#   mse_ao_sg    --clip mse --act-order --static-groups    gq's default profile
#   mse_ao_sg_s1 the same with --hessian-skip 1           the first token of each window out of the Hessians
# Calibration draws: 128 concat windows of 2048 tokens of calib/python-sitepackages.jsonl (its 144 records
# make 248 such windows): draw 0 is the file in its order (the protocol's windows, those of the reference
# figures); draw d > 0 is `--calib-seed d`, the records shuffled, so its first 128 windows are another
# subset in another order.
# Perplexity and KL: all 155 windows of 2048 tokens of tests/data/text/python-stdlib-eval.txt, `gq ppl --base`
# against the unquantized model in the same precision.
# Precisions: PRECS (default "auto fp32"): auto is fp16 activations on CUDA (the reference's arithmetic),
# fp32 the CPU's arithmetic on the GPU; both for quantize and ppl.
# On the CPU (two OpenBLAS kernel sets, as the fidelity protocol asks):
#   for c in Haswell SkylakeX; do OPENBLAS_CORETYPE=$c DEV=cpu PRECS=auto TMO=1800 SKIP_BUILD=1 OUT=out/fid-$c \
#       LOGS=out/fid-$c MODELS=m5 sh bench/fidelity.sh; done
#
# Logs in $LOGS; the table also in $OUT/fidelity.txt.
set -u
OUT=${OUT:-gpu-logs}
LOGS=${LOGS:-gpu-logs/fidelity}
mkdir -p "$OUT" "$LOGS" bench-models
R="$OUT/fidelity.txt"
: > "$R"
GQ=${GQ_BIN:-./build/gq}
DEV=${DEV:-cuda}
PRECS=${PRECS:-"auto fp32"}
TMO=${TMO:-300} # seconds per quantize or ppl run (the CPU needs ~1800)
TEXT=tests/data/text/python-stdlib-eval.txt
CALIB=calib/python-sitepackages.jsonl
MODELS=${MODELS:-"m5 m30"}
DRAWS=${DRAWS:-"0 1 2"}
METHODS=${METHODS:-"ref:--clip|minmax|--no-act-order ao_sg:--clip|minmax|--act-order|--static-groups mse:--clip|mse|--no-act-order mse_ao_sg:--clip|mse|--act-order|--static-groups mse_ao_sg_s1:--clip|mse|--act-order|--static-groups|--hessian-skip|1"}
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
"$GQ" quantize --help 2>&1 | grep -q -- '--calib-seed' || { echo "$GQ has no --calib-seed option: rebuild"; exit 1; }
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

ppl_of() { grep -h '^ppl = ' "$1" | awk '{print $3}'; }
kld_of() { grep -h '^kld mean = ' "$1" | awk '{print $4}'; }
top1_of() { grep -h '^kld mean = ' "$1" | sed 's/.*top1 = //'; }

say "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1); precisions $PRECS; $(date -u +%F)"
for m in $MODELS; do
    M=$(model_dir "$m")
    for pr in $PRECS; do
        timeout $TMO "$GQ" ppl --model "$M" --text $TEXT --device "$DEV" --precision "$pr" > "$LOGS/${m}_${pr}_fp16.log" 2>&1
        say "$(printf '%-13s %-4s %-5s %-4s %9s' unquantized "$m" "$pr" - "$(ppl_of "$LOGS/${m}_${pr}_fp16.log")")"
    done
done
printf '%-13s %-4s %-5s %-4s %9s %9s %7s %7s\n' method model prec draw ppl kld top1 quant_s | tee -a "$R"
T="$LOGS/runs.tsv"
: > "$T"
for m in $MODELS; do
    M=$(model_dir "$m")
    for pr in $PRECS; do
        for d in $DRAWS; do
            for cfg in $METHODS; do
                name=${cfg%%:*}
                opts=$(echo "${cfg#*:}" | tr '|' ' ')
                q="bench-models/fid-$m-$name-$d"
                L="$LOGS/${m}_${pr}_${name}_$d"
                t0=$(date +%s.%N)
                # shellcheck disable=SC2086
                timeout $TMO "$GQ" quantize --model "$M" --out "$q" --calib $CALIB --calib-seed "$d" --device "$DEV" \
                    --precision "$pr" --force $opts > "$L.q.log" 2>&1
                rc=$?
                t1=$(date +%s.%N)
                p=NA k=NA t=NA
                if [ $rc -eq 0 ]; then
                    timeout $TMO "$GQ" ppl --model "$q" --base "$M" --text $TEXT --device "$DEV" --precision "$pr" \
                        > "$L.p.log" 2>&1
                    p=$(ppl_of "$L.p.log") k=$(kld_of "$L.p.log") t=$(top1_of "$L.p.log")
                    [ -n "$p" ] || p=NA
                    [ -n "$k" ] || k=NA
                    [ -n "$t" ] || t=NA
                else
                    echo "  $m $pr $name draw $d: quantize failed (rc $rc):" | tee -a "$R"
                    tail -n 3 "$L.q.log" | tee -a "$R"
                fi
                rm -rf "$q"
                qs=$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")
                printf '%-13s %-4s %-5s %-4s %9s %9s %7s %7s\n' "$name" "$m" "$pr" "$d" "$p" "$k" "$t" "$qs" | tee -a "$R"
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$m" "$pr" "$d" "$p" "$k" "$t" >> "$T"
            done
        done
    done
done

say ""
say "per method, model and precision over the draws (draw 0 = the protocol's windows): ppl mean [min, max], kld and top1 means"
printf '%-13s %-4s %-5s %3s %9s %9s %9s %9s %9s %7s\n' method model prec n mean min max draw0 kld top1 | tee -a "$R"
awk -F'\t' '$5 != "NA" {
        k = $1 "\t" $2 "\t" $3
        if (!(k in n)) { order[++no] = k; mn[k] = $5; mx[k] = $5 }
        n[k]++; s[k] += $5; kl[k] += $6; t1[k] += $7
        if ($5 < mn[k]) mn[k] = $5
        if ($5 > mx[k]) mx[k] = $5
        if ($4 == 0) d0[k] = $5
    }
    END {
        for (i = 1; i <= no; i++) {
            k = order[i]; split(k, a, "\t")
            printf "%-13s %-4s %-5s %3d %9.4f %9.4f %9.4f %9s %9.6f %7.4f\n", a[1], a[2], a[3], n[k], s[k] / n[k], mn[k],
                mx[k], (k in d0) ? d0[k] : "-", kl[k] / n[k], t1[k] / n[k]
        }
    }' "$T" | tee -a "$R"
say ""
say "targets (int4 g128 sym, draw 0): pycoder-30m <= 8.8429 (reference 8.8563), pycoder-5m <= 11.5072 (reference 11.5873)"
