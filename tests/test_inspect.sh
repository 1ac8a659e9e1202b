#!/bin/sh
# tests/test_inspect.sh -- checkpoints that do not match their config.json: `gq inspect` lists
# every problem and exits non-zero; `gq quantize` and `gq ppl` refuse them before any layer runs,
# and quantize leaves neither OUT nor OUT.partial behind. Good checkpoints inspect as before.
# Run by tests/run.sh (GQ_BIN points at the binary). Prints RESULT p f s.
GQ=${GQ_BIN:-build/gq}
D=${GQ_TEST_DATA:-tests/data}
T=${TMPDIR:-/tmp}/gq-test-inspect-$$
mkdir -p "$T"
p=0; f=0
check() { # check "what" expected-status command...: status and stderr/stdout kept in $T/out
    what=$1 want=$2
    shift 2
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL inspect: $what: exit status $rc, expected $want"; tail -3 "$T/out"; fi
}
fails() { # fails "what" command...: a non-zero exit status (the code is main.c's business)
    what=$1
    shift
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL inspect: $what: exit status 0, expected non-zero"; tail -3 "$T/out"; fi
}
has() { # has "what" "text": the last command's output contains text
    if grep -qF -- "$2" "$T/out"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL inspect: $1: output lacks '$2'"; tail -3 "$T/out"; fi
}
lacks() { # lacks "what" "text": the last command's output does not contain text
    if grep -qF -- "$2" "$T/out"; then f=$((f + 1)); echo "FAIL inspect: $1: output has '$2'"; tail -3 "$T/out"; else p=$((p + 1)); fi
}
absent() { # absent "what" path: quantize left nothing there
    if [ -e "$2" ]; then f=$((f + 1)); echo "FAIL inspect: $1: $2 exists"; else p=$((p + 1)); fi
}
# variant NAME SRC SED: a copy of checkpoint SRC in $T/NAME with config.json edited by sed expression SED
variant() {
    rm -rf "$T/$1"
    cp -r "$2" "$T/$1"
    sed -e "$3" "$2/config.json" > "$T/$1/config.json"
}

check "inspect a good model" 0 "$GQ" inspect "$D/pycoder-5m"
has "good: architecture" "LlamaForCausalLM: hidden 256, intermediate 768, 4 layers"
lacks "good: no problems" "problems"
check "inspect a quantized fixture" 0 "$GQ" inspect "$D/fwd/tiny-gptq4-v1-actorder"
lacks "quantized fixture: no problems" "problems"

variant layers6 "$D/pycoder-5m" 's/"num_hidden_layers": 4/"num_hidden_layers": 6/'
fails "inspect: more layers than tensors" "$GQ" inspect "$T/layers6"
has "layers named" "num_hidden_layers is 6, but the tensors hold layers 0..3 only (4 layers)"
has "summary still printed" "parameters     5245184"
has "error line" "error: $T/layers6: 1 problem with the checkpoint"

variant hidden "$D/pycoder-5m" 's/"hidden_size": 256/"hidden_size": 128/'
fails "inspect: wrong hidden_size" "$GQ" inspect "$T/hidden"
has "every problem counted" "problems       38 (config.json against the safetensors headers)"
has "first problem" "model.safetensors: tensor 'model.embed_tokens.weight': expected shape [8192, 128], got [8192, 256] (vocab_size 8192, hidden_size 128)"
has "the 20th listed" "tensor 'model.layers.2.input_layernorm.weight': expected shape [128], got [256] (hidden_size 128)"
lacks "the 21st not" "model.layers.2.post_attention_layernorm.weight"
has "the rest counted" "... and 18 more"

variant eps0 "$D/pycoder-5m" 's/"rms_norm_eps": 1e-05/"rms_norm_eps": 0/'
fails "inspect: rms_norm_eps 0" "$GQ" inspect "$T/eps0"
has "eps named" "\"rms_norm_eps\" must be a number > 0"

variant group16 "$D/fwd/tiny-gptq4-v1-actorder" 's/"group_size": 32/"group_size": 16/'
fails "inspect: group_size against the tensors" "$GQ" inspect "$T/group16"
has "qzeros named" "tensor 'model.layers.0.self_attn.q_proj.qzeros': expected shape [4, 8], got [2, 8]"

variant layers1e9 "$D/pycoder-5m" 's/"num_hidden_layers": 4/"num_hidden_layers": 1000000000/'
fails "quantize: num_hidden_layers 1e9" "$GQ" quantize --model "$T/layers1e9" --out "$T/q1" --method rtn
has "quantize names the field" "\"num_hidden_layers\" is 1000000000, beyond gq's limit of 4096"
lacks "no layer ran" "layer 1/"
absent "no output" "$T/q1"
absent "no partial run" "$T/q1.partial"

fails "quantize: wrong hidden_size" "$GQ" quantize --model "$T/hidden" --out "$T/q2" --method rtn
has "quantize lists problems" "38 problems (config.json against the safetensors headers)"
has "quantize names a tensor" "tensor 'model.layers.0.self_attn.q_proj.weight': expected shape [128, 128], got [256, 256]"
lacks "no layer ran" "layer 1/"
absent "no output" "$T/q2"
absent "no partial run" "$T/q2.partial"

fails "ppl: more layers than tensors" "$GQ" ppl --model "$T/layers6" --text "$D/text/python-stdlib-eval.txt"
has "ppl names the field" "num_hidden_layers is 6"

check "rtn quantize a good model" 0 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/q3" --method rtn
check "inspect gq's output" 0 "$GQ" inspect "$T/q3"
lacks "gq's output: no problems" "problems"
rm -rf "$T"
echo "test_inspect.sh: $p passed, $f failed, 0 skipped"
echo "RESULT $p $f 0"
[ "$f" -eq 0 ]
