#!/bin/sh
# tests/test_cli.sh -- the gq binary: exit codes, messages, gq inspect.
# Run by tests/run.sh (GQ_BIN points at the binary). Prints RESULT p f s.
GQ=${GQ_BIN:-build/gq}
D=${GQ_TEST_DATA:-tests/data}
T=${TMPDIR:-/tmp}/gq-test-cli-$$
mkdir -p "$T"
p=0; f=0
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
check "no command: usage" 2 "$GQ"
has "usage lists commands" "quantize"
check "--help" 0 "$GQ" --help
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
check "missing model" 1 "$GQ" quantize --model "$T/none" --out "$T/q"
has "names the path" "$T/none"
check "inspect a model" 0 "$GQ" inspect "$D/pycoder-5m"
has "inspect: architecture" "LlamaForCausalLM: hidden 256, intermediate 768, 4 layers"
has "inspect: parameters" "parameters     5245184"
has "inspect: quantization" "quantization   none"
check "rtn quantize" 0 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q" --method rtn
check "inspect the output" 0 "$GQ" inspect "$T/q"
has "inspect: int4 parameters" "5245184 (2099456 unquantized + 3145728 in 4-bit linears)"
has "inspect: quantization config" "GPTQ 4-bit, group size 128, symmetric, desc_act false"
check "existing output" 1 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q" --method rtn
has "existing output message" "output already exists (use --force to replace it)"
printf 'not a safetensors file' > "$T/bad.safetensors"
check "inspect a bad file" 1 "$GQ" inspect "$T/bad.safetensors"
has "bad file named" "$T/bad.safetensors"
check "ppl without --text" 2 "$GQ" ppl --model "$D/pycoder-5m"
check "bad --precision" 2 "$GQ" ppl --model "$D/pycoder-5m" --text "$D/text/python-stdlib-eval.txt" --precision bf16
has "precision choices" "--precision: expected one of auto|fp16|fp32, got 'bf16'"
check "fp16 on the CPU" 1 "$GQ" ppl --model "$D/pycoder-5m" --text "$D/text/python-stdlib-eval.txt" --device cpu \
    --precision fp16
has "fp16 on the CPU refused" "precision fp16: the CPU backend computes in fp32 only"
check "report" 0 cat "$T/q/gq_report.json"
has "report: precision" '"precision": "fp32"'
check "tokenize" 0 "$GQ" tokenize --model "$D/pycoder-5m" --ids "def f(x):"
has "tokenize ids" "1 "
rm -rf "$T"
echo "test_cli.sh: $p passed, $f failed, 0 skipped"
echo "RESULT $p $f 0"
[ "$f" -eq 0 ]
