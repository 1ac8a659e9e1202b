#!/bin/sh
# tests/test_cli.sh -- the gq binary: exit codes, messages, --version, gq inspect, and README.md's
# Usage block against every command's --help.
# Run by tests/run.sh (GQ_BIN points at the binary) from the source tree. Prints RESULT p f s.
GQ=${GQ_BIN:-build/gq}
D=${GQ_TEST_DATA:-tests/data}
T=${TMPDIR:-/tmp}/gq-test-cli-$$
mkdir -p "$T"
p=0; f=0; s=0
check() { # check "what" expected-status command...: status and stderr/stdout kept in $T/out
    what=$1 want=$2
    shift 2
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL cli: $what: exit status $rc, expected $want"; tail -3 "$T/out"; fi
}
has() { # has "what" "text": the last command's output contains text
    if grep -qF -- "$2" "$T/out"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL cli: $1: output lacks '$2'"; tail -3 "$T/out"; fi
}
lacks() { # lacks "what" "text": the last command's output does not contain text
    if grep -qF -- "$2" "$T/out"; then f=$((f + 1)); echo "FAIL cli: $1: output has '$2':"; grep -F -- "$2" "$T/out" | head -3
    else p=$((p + 1)); fi
}
bad() { # bad "what" expected-status command...: fails with that status, "gq <cmd>: error: " once, no "gq " after it
    what=$1
    check "$@"
    has "$what: error line" ": error: "
    lacks "$what: error prefix repeated" "error: gq "
}
check "no command: usage" 2 "$GQ"
has "usage lists commands" "quantize"
check "--help" 0 "$GQ" --help
has "--help: exit status table" "10  output exists"
check "--version" 0 "$GQ" --version
if grep -qE '^gq [0-9]+\.[0-9]+\.[0-9]+[^ ]* \(git [^ ,]+, CUDA (on|off), OpenBLAS [A-Za-z0-9_]+\)$' "$T/out"; then p=$((p + 1))
else f=$((f + 1)); echo "FAIL cli: --version: expected 'gq X.Y.Z (git HASH, CUDA on|off, OpenBLAS CORE)', got:"; cat "$T/out"; fi
cp "$T/out" "$T/version"
check "version" 0 "$GQ" version
if cmp -s "$T/out" "$T/version"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL cli: gq version differs from gq --version"; fi
check "unknown command" 2 "$GQ" frobnicate
has "unknown command named" "unknown command 'frobnicate'"
check "quantize --help" 0 "$GQ" quantize --help
has "quantize help shows defaults" "--group-size N"
check "quantize without --out" 2 "$GQ" quantize --model "$D/pycoder-5m"
has "names the missing option" "--model and --out are required"
check "bad --bits" 2 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q" --bits 5
has "bits choices" "--bits: expected one of 2|3|4|8, got '5'"
check "bad --damp" 2 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q" --damp abc
has "damp message" "--damp: expected a number, got 'abc'"
check "missing model: I/O" 3 "$GQ" quantize --model "$T/none" --out "$T/q"
has "names the path" "$T/none"
check "inspect a model" 0 "$GQ" inspect "$D/pycoder-5m"
has "inspect: architecture" "LlamaForCausalLM: hidden 256, intermediate 768, 4 layers"
has "inspect: parameters" "parameters     5245184"
has "inspect: quantization" "quantization   none"
check "rtn quantize" 0 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q" --method rtn
check "inspect the output" 0 "$GQ" inspect "$T/q"
has "inspect: int4 parameters" "5245184 (2099456 unquantized + 3145728 in 4-bit linears)"
has "inspect: quantization config" "GPTQ 4-bit, group size 128, symmetric, desc_act false"
check "existing output: exists" 10 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q" --method rtn
has "existing output message" "output already exists (use --force to replace it)"
printf 'not a safetensors file' > "$T/bad.safetensors"
check "inspect a bad file: format" 4 "$GQ" inspect "$T/bad.safetensors"
has "bad file named" "$T/bad.safetensors"
check "ppl without --text" 2 "$GQ" ppl --model "$D/pycoder-5m"
check "bad --precision" 2 "$GQ" ppl --model "$D/pycoder-5m" --text "$D/text/python-stdlib-eval.txt" --precision bf16
has "precision choices" "--precision: expected one of auto|fp16|fp32, got 'bf16'"
check "fp16 on the CPU: unsupported" 6 "$GQ" ppl --model "$D/pycoder-5m" --text "$D/text/python-stdlib-eval.txt" --device cpu \
    --precision fp16
has "fp16 on the CPU refused" "precision fp16: the CPU backend computes in fp32 only"
# options are checked before anything is loaded: with a model that does not exist, the option's
# error comes first (a missing model would be exit 3)
check "--device tpu before loading" 2 "$GQ" quantize --model "$T/none" --out "$T/q9" --device tpu
has "device choices" "device 'tpu': expected cpu, cuda, cuda:N (N = 0, 1, ...) or auto"
check "ppl --device tpu before loading" 2 "$GQ" ppl --model "$T/none" --text "$T/none.txt" --device tpu
check "calib --device tpu before loading" 2 "$GQ" calib --model "$T/none" --questions "$T/none.jsonl" \
    --out "$T/c.jsonl" --device tpu
check "fp16 on the CPU before loading" 6 "$GQ" quantize --model "$T/none" --out "$T/q9" --device cpu --precision fp16
check "--device cuda:0,0 before loading" 2 "$GQ" quantize --model "$T/none" --out "$T/q9" --device cuda:0,0
has "a device named twice" "device 'cuda:0,0': cuda:0 named twice"
check "--device cuda:0,x before loading" 2 "$GQ" quantize --model "$T/none" --out "$T/q9" --device cuda:0,x
has "device list form" "expected cuda:N,M,... (device numbers) or cuda:all"
if "$GQ" --version | grep -q "CUDA off"; then
    check "--device cuda without CUDA support" 6 "$GQ" quantize --model "$T/none" --out "$T/q9" --device cuda
    has "says the build has no CUDA" "this gq build has no CUDA backend"
elif ! command -v nvidia-smi > /dev/null 2>&1; then
    check "--device cuda without a GPU" 9 "$GQ" quantize --model "$T/none" --out "$T/q9" --device cuda
    has "says no device was found" "no CUDA device found"
fi
check "--max-shard-mb -1" 2 "$GQ" quantize --model "$T/none" --out "$T/q9" --max-shard-mb -1
has "shard size message" "--max-shard-mb: expected >= 0 (0: one file), got -1"
check "--group-size 7" 2 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q9" --group-size 7
has "group size names the widths" "--group-size 7: expected -1 or a size that divides every linear's input width"
check "--group-size past the widths" 2 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q9" --group-size 1024
[ ! -e "$T/q9" ] && [ ! -e "$T/q9.partial" ] && [ ! -e "$T/q9.lock" ] && p=$((p + 1)) || {
    f=$((f + 1)); echo "FAIL cli: a refused option left $T/q9, .partial or .lock behind"; }
check "--seqlen past the context: a warning" 0 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q9" --method rtn \
    --seqlen 100000
has "context warning" "--seqlen 100000 is past the model's context"
check "report" 0 cat "$T/q/gq_report.json"
has "report: precision" '"precision": "fp32"'
v=$("$GQ" --version | awk '{print $2}')
has "report: the version gq --version prints" "\"quantizer\": \"gq $v\""
# environment knobs: read once, printed with the settings, recorded in the report; a bad value is ignored with a warning
check "knobs: printed" 0 env GQ_CPU_ATTN=blas GQ_CUDA_HINV=bogus "$GQ" quantize --model "$D/pycoder-5m" --out "$T/qk" \
    --method rtn
has "knobs: the settings line" "environment      GQ_CPU_ATTN=blas"
has "knobs: a bad value warned" "GQ_CUDA_HINV=bogus ignored: expected f64|potri|f32"
check "knobs: report" 0 cat "$T/qk/gq_report.json"
has "knobs: recorded" '"environment": "GQ_CPU_ATTN=blas'
check "config" 0 cat "$T/q/config.json"
has "quantization_config: the same version" "\"gq:$v\""
check "tokenize" 0 "$GQ" tokenize --model "$D/pycoder-5m" --ids "def f(x):"
has "tokenize ids" "1 "
printf '{"text": "x = 1"}\n' > "$T/tiny.jsonl"
check "too little calibration data: data" 11 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q2" --calib "$T/tiny.jsonl" \
    --nsamples 2 --seqlen 64
has "data message" "too little calibration data"

# Errors print "gq <cmd>: error: <message>"; the message does not repeat "gq <cmd>: ".
M="$D/pycoder-5m"
bad "quantize: missing --out" 2 "$GQ" quantize --model "$M"
bad "quantize: unknown option" 2 "$GQ" quantize --model "$M" --out "$T/q3" --frobnicate
bad "quantize: bad --bits" 2 "$GQ" quantize --model "$M" --out "$T/q3" --bits 5
bad "quantize: --sym --asym" 2 "$GQ" quantize --model "$M" --out "$T/q3" --sym --asym
bad "quantize: --threads -1" 2 "$GQ" quantize --model "$M" --out "$T/q3" --threads -1
bad "quantize: --act-order --no-act-order" 2 "$GQ" quantize --model "$M" --out "$T/q3" --act-order --no-act-order
bad "quantize: --static-groups --no-static-groups" 2 "$GQ" quantize --model "$M" --out "$T/q3" --static-groups \
    --no-static-groups
bad "quantize: --calib-seed -1" 2 "$GQ" quantize --model "$M" --out "$T/q3" --calib-seed -1
bad "quantize: --hessian-skip -1" 2 "$GQ" quantize --model "$M" --out "$T/q3" --hessian-skip -1
bad "quantize: bad --clip" 2 "$GQ" quantize --model "$M" --out "$T/q3" --clip best
bad "ppl: bad --int4-kernel" 2 "$GQ" ppl --model "$M" --text "$D/text/python-stdlib-eval.txt" --int4-kernel yes
bad "eval: bad --int4-kernel" 2 "$GQ" eval --task humaneval --model "$M" --int4-kernel yes
has "eval: --int4-kernel's choices" "auto|on|off"
bad "calib: bad --int4-kernel" 2 "$GQ" calib --model "$M" --out "$T/c.jsonl" --int4-kernel maybe
has "calib: --int4-kernel's choices" "auto|on|off"
bad "quantize: flag with a value" 2 "$GQ" quantize --model "$M" --out "$T/q3" --force=yes
bad "ppl: missing --text" 2 "$GQ" ppl --model "$M"
bad "ppl: --seqlen 1" 2 "$GQ" ppl --model "$M" --text "$D/text/python-stdlib-eval.txt" --seqlen 1
bad "ppl: --max-windows needs a value" 2 "$GQ" ppl --model "$M" --text "$D/text/python-stdlib-eval.txt" --max-windows
bad "ppl: missing text file" 3 "$GQ" ppl --model "$M" --text "$T/none.txt"
bad "calib: nothing given" 2 "$GQ" calib
bad "calib: bad --n" 2 "$GQ" calib --model "$M" --questions q.jsonl --out "$T/c.jsonl" --n many
bad "calib: bad --seed" 2 "$GQ" calib --model "$M" --questions q.jsonl --out "$T/c.jsonl" --seed -1
bad "inspect: no PATH" 2 "$GQ" inspect
bad "inspect: two PATHs" 2 "$GQ" inspect "$M" "$M"
bad "inspect: unknown option" 2 "$GQ" inspect -t "$M"
bad "tokenize: no --model" 2 "$GQ" tokenize "def"
bad "tokenize: --text and STRING" 2 "$GQ" tokenize --model "$M" --text "$T/tiny.jsonl" "def"
bad "tokenize: bad --decode" 2 "$GQ" tokenize --model "$M" --decode 1,x

# README.md's Usage block lists every option that `gq <cmd> --help` shows, and no other. Options whose help
# says "(testing)" (quantize --max-layers) exist for the test suite: the README need not list them.
readme=${GQ_README:-README.md}
if [ -f "$readme" ]; then
    awk '/^## Usage/ {u = 1; next} u && /^```/ {if (b) exit; b = 1; next} b' "$readme" > "$T/usage"
    for cmd in quantize ppl calib inspect tokenize eval; do
        "$GQ" "$cmd" --help > "$T/help" 2>&1
        grep '^  --' "$T/help" | grep -vF '(testing)' | sed 's/^  --\([a-z0-9-]*\).*/\1/' | grep -vx help | sort -u > "$T/h"
        awk -v c="$cmd" '/^gq / {on = ($2 == c)} on' "$T/usage" | grep -o -- '--[a-z0-9][a-z0-9-]*' | sed 's/^--//' \
            | sort -u > "$T/r"
        nf=$f
        [ -s "$T/h" ] || { f=$((f + 1)); echo "FAIL cli: README: gq $cmd --help lists no options"; }
        [ -s "$T/r" ] || { f=$((f + 1)); echo "FAIL cli: README: no 'gq $cmd' line in the Usage block of $readme"; }
        for o in $(comm -23 "$T/h" "$T/r"); do
            f=$((f + 1)); echo "FAIL cli: README: gq $cmd --$o is in 'gq $cmd --help' but not in the Usage block of $readme"
        done
        for o in $(comm -13 "$T/h" "$T/r"); do
            f=$((f + 1)); echo "FAIL cli: README: gq $cmd --$o is in the Usage block of $readme but not in 'gq $cmd --help'"
        done
        [ "$f" -eq "$nf" ] && p=$((p + 1))
    done
else
    s=$((s + 1)); echo "SKIP cli: README: $readme not found (run from the source tree)"
fi
rm -rf "$T"
echo "test_cli.sh: $p passed, $f failed, $s skipped"
echo "RESULT $p $f $s"
[ "$f" -eq 0 ]
