#!/bin/sh
# bench/unpack_check.sh -- the gq side of the independent-unpacker check
# (tests/ref/check_unpack.py, results in docs/unpack-check.md).
#
#   sh bench/unpack_check.sh [make] [gqppl] [verify] [pack]    (default: the first three)
#
#   make    quantize tests/data/pycoder-5m into $D/<name> in five settings
#   gqppl   `gq ppl` of the fp16 model and of each output; stdout kept in $D/<name>.gqppl.txt
#   verify  the numpy-only checks of check_unpack.py (no torch): packing, zeros, g_idx,
#           non-quantized tensors byte-equal to the original, RTN codes/dequantization
#           bit for bit against a numpy RTN of the original weights
#   pack    the five outputs as one $D/carry/outputs.tar.xz (8 MB instead of 31 MB: the shared
#           embeddings compress away) for the device tool's 64 MiB working-tree limit
#
# Then, on a machine with torch + transformers (a GPU), the independent perplexities
# (after `tar xJf $D/carry/outputs.tar.xz -C $D` there):
#   python3 tests/ref/check_unpack.py ppl --orig tests/data/pycoder-5m --json $D/indep.json $D/<name>...
# and the table:
#   python3 tests/ref/check_unpack.py table --indep $D/indep.json --gq-dir $D
#
# Environment: GQ (binary, default build/gq), D (output folder, default unpack-tmp; keep it
# git-ignored), THREADS (gq --threads, default 1: the figures then do not depend on the core
# count), PY (python3 with numpy + safetensors).
set -eu
GQ=${GQ:-build/gq}
D=${D:-unpack-tmp}
T=${THREADS:-1}
PY=${PY:-python3}
M=tests/data/pycoder-5m
TEXT=tests/data/text/python-stdlib-eval.txt
NAMES="rtn-sym gptq-sym gptq-asym-act gptq3-asym gptq-sym-sharded"
steps=${*:-make gqppl verify}

q() {
    name=$1
    shift
    echo "== quantize $name: $*"
    "$GQ" quantize --model "$M" --out "$D/$name" --force --threads "$T" "$@" >"$D/$name.quantize.log" 2>&1 ||
        { tail -20 "$D/$name.quantize.log"; exit 1; }
}

mkdir -p "$D"
for step in $steps; do
    case $step in
    make)
        q rtn-sym --method rtn --sym
        q gptq-sym
        q gptq-asym-act --asym --act-order
        q gptq3-asym --bits 3 --asym
        q gptq-sym-sharded --max-shard-mb 1
        ;;
    gqppl)
        for name in fp16 $NAMES; do
            model="$D/$name"
            [ "$name" = fp16 ] && model=$M
            echo "== gq ppl $name"
            "$GQ" ppl --model "$model" --text "$TEXT" --threads "$T" >"$D/$name.gqppl.txt" 2>"$D/$name.gqppl.log" ||
                { tail -20 "$D/$name.gqppl.log"; exit 1; }
            cat "$D/$name.gqppl.txt"
        done
        ;;
    verify)
        set --
        for name in $NAMES; do set -- "$@" "$D/$name"; done
        "$PY" tests/ref/check_unpack.py verify --orig "$M" "$@"
        ;;
    pack)
        mkdir -p "$D/carry"
        (cd "$D" && tar cf - $NAMES | xz -9 -T1 >carry/outputs.tar.xz)
        ls -l "$D/carry/outputs.tar.xz"
        ;;
    *)
        echo "unknown step $step (make, gqppl, verify, pack)" >&2
        exit 2
        ;;
    esac
done
