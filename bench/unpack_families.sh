#!/bin/sh
# bench/unpack_families.sh -- the independent-unpacker check (tests/ref/check_unpack.py) on every
# model family fixture of tests/data/families (results in docs/unpack-check.md, "Model families").
#
#   sh bench/unpack_families.sh [make] [gqppl] [verify] [same] [ppl] [table]
#                                          (default: make gqppl verify same table; ppl needs torch)
#
#   make    per fixture (FIXTURES): copy config.json + model.safetensors to $D/orig/<fx> with the
#           pycoder-5m tokenizer beside them (the fixtures share it and do not hold it), then
#           `gq quantize --bits 4 --group-size 32 --nsamples 8 --seqlen 128` (GPTQ, sym, the
#           default calibration file) into $D/out/<fx>
#   gqppl   `gq ppl --text $TEXT --seqlen 128 --max-windows 8` of the original copy and of the
#           output; stdout in $D/gqppl/<fx>.fp16.txt and <fx>.gptq.txt
#   verify  check_unpack.py verify (numpy only) of each output against its original copy
#   same    the outputs of a MoE fixture and of its -fused sibling (the same weights in the other
#           expert layout) hold byte-identical tensors
#   ppl     (torch + transformers) check_unpack.py ppl on the same text, seqlen and windows as
#           gqppl -> $D/indep/<fx>.text.json, and on the fixture's golden ids (--ids-from
#           tests/data/families/<family>/golden.safetensors: 2 rows of 128 ids, no <s>; the
#           control must give the fixture's own transformers ppl) -> $D/indep/<fx>.ids.json
#   table   check_unpack.py famtable: gq ppl vs unpacker ppl per fixture (fp16 and gptq), and the
#           ids table; exit 1 if a relative difference exceeds TOL (default 1e-4)
#
# Environment: GQ (binary, default build/gq), D (folder, default unpack-tmp/families: keep it
# git-ignored), THREADS (gq --threads, default 1), PY (python3; numpy for verify/same/table,
# torch + transformers + tokenizers for ppl), DEVICE (ppl's torch device, default cuda if there is
# one), FIXTURES (default all ten), TOL.
#
# On a machine without torch: `sh bench/unpack_families.sh` here, then on the GPU machine (torch
# 2.11, transformers 5.17), with $D carried along (about 12 MB):
#   sh bench/unpack_families.sh ppl table
set -eu
GQ=${GQ:-build/gq}
D=${D:-unpack-tmp/families}
T=${THREADS:-1}
PY=${PY:-python3}
TOL=${TOL:-1e-4}
TEXT=tests/data/text/python-stdlib-eval.txt
TOK=tests/data/pycoder-5m
FAM=tests/data/families
CALIB=calib/python-sitepackages.jsonl
SEQLEN=128
WINDOWS=8
FIXTURES=${FIXTURES:-qwen2 qwen3 mistral mixtral mixtral-fused qwen3_moe qwen3_moe-fused gemma2 phi3 starcoder2}
CHECK=tests/ref/check_unpack.py
steps=${*:-make gqppl verify same table}

for f in "$TEXT" "$TOK/tokenizer.json" "$CALIB"; do
    [ -f "$f" ] || { echo "missing $f (run from the repository root)" >&2; exit 2; }
done
mkdir -p "$D/orig" "$D/out" "$D/log" "$D/gqppl" "$D/verify" "$D/indep"
fail=0
for step in $steps; do
    case $step in
    make)
        for fx in $FIXTURES; do
            rm -rf "$D/orig/$fx"
            mkdir -p "$D/orig/$fx"
            cp "$FAM/$fx/config.json" "$FAM/$fx/model.safetensors" "$D/orig/$fx/"
            cp "$TOK/tokenizer.json" "$TOK/tokenizer_config.json" "$D/orig/$fx/"
            echo "== quantize $fx"
            "$GQ" quantize --model "$D/orig/$fx" --out "$D/out/$fx" --force --threads "$T" --calib "$CALIB" \
                --bits 4 --group-size 32 --nsamples 8 --seqlen "$SEQLEN" >"$D/log/$fx.quantize.log" 2>&1 ||
                { tail -20 "$D/log/$fx.quantize.log"; exit 1; }
            grep '^done' "$D/log/$fx.quantize.log" || true
        done
        ;;
    gqppl)
        for fx in $FIXTURES; do
            for m in fp16 gptq; do
                model="$D/out/$fx"
                [ $m = fp16 ] && model="$D/orig/$fx"
                "$GQ" ppl --model "$model" --text "$TEXT" --seqlen "$SEQLEN" --max-windows "$WINDOWS" --threads "$T" \
                    >"$D/gqppl/$fx.$m.txt" 2>"$D/log/$fx.$m.gqppl.log" || { tail -20 "$D/log/$fx.$m.gqppl.log"; exit 1; }
                echo "$fx $m: $(cat "$D/gqppl/$fx.$m.txt")"
            done
        done
        ;;
    verify)
        for fx in $FIXTURES; do
            "$PY" $CHECK verify --orig "$D/orig/$fx" --json "$D/verify/$fx.json" "$D/out/$fx" || fail=1
        done
        ;;
    same)
        for fx in $FIXTURES; do
            case $fx in
            *-fused)
                base=${fx%-fused}
                [ -d "$D/out/$base" ] && { "$PY" $CHECK same "$D/out/$base" "$D/out/$fx" || fail=1; }
                ;;
            esac
        done
        ;;
    ppl)
        dev=
        [ -n "${DEVICE:-}" ] && dev="--device $DEVICE"
        for fx in $FIXTURES; do
            base=${fx%-fused}
            echo "== ppl $fx (text)"
            "$PY" $CHECK ppl $dev --orig "$D/orig/$fx" --text "$TEXT" --seqlen "$SEQLEN" --max-windows "$WINDOWS" \
                --json "$D/indep/$fx.text.json" "$D/out/$fx" || fail=1
            echo "== ppl $fx (ids of $FAM/$base/golden.safetensors)"
            "$PY" $CHECK ppl $dev --orig "$D/orig/$fx" --ids-from "$FAM/$base/golden.safetensors" \
                --json "$D/indep/$fx.ids.json" "$D/out/$fx" || fail=1
        done
        ;;
    table)
        "$PY" $CHECK famtable --dir "$D" --tol "$TOL" || fail=1
        ;;
    *)
        echo "unknown step $step (make, gqppl, verify, same, ppl, table)" >&2
        exit 2
        ;;
    esac
done
exit $fail
