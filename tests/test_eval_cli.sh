#!/bin/sh
# tests/test_eval_cli.sh -- `gq eval` through the binary: README's Usage lines against `gq eval --help`
# (both ways), usage errors, the controls (every canonical solution passes: HumanEval 164/164, MBPP
# 500/500 (the first 100 with GQ_TEST_QUICK); the broken ones all fail), the --samples scoring path
# with hostile completions (loop, fork bomb, memory hog, kill of the parent, write to ../), the JSONL
# records and summary, --resume (a torn tail cut), a tiny generation on the CPU with
# tests/data/pycoder-5m (--limit 3: it scores ~0; the plumbing is checked), --base against an RTN
# int4 of it, --template chat, and the refusal where namespaces are refused.
# Runs in the sandbox mode this machine allows (printed); where the kernel refuses namespaces, the
# refusal is checked and the rest runs with --unsafe-no-sandbox (SKIP line). Prints RESULT p f s.
GQ=${GQ_BIN:-build/gq}
D=${GQ_TEST_DATA:-tests/data}
T=${TMPDIR:-/tmp}/gq-test-eval-cli-$$
mkdir -p "$T"
p=0; f=0; s=0
check() { # check "what" expected-status command...: status and output kept in $T/out
    what=$1 want=$2
    shift 2
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL eval-cli: $what: exit status $rc, expected $want"; tail -5 "$T/out"; fi
}
has() { # has "what" "text" [file]: the last command's output (or file) contains text
    if grep -qF -- "$2" "${3:-$T/out}"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL eval-cli: $1: ${3:-output} lacks '$2'"; tail -3 "${3:-$T/out}"; fi
}
count() { # count "what" N "text" file: lines of file containing text
    n=$(grep -cF -- "$3" "$4")
    if [ "$n" -eq "$2" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL eval-cli: $1: $n lines with '$3' in $4, expected $2"; fi
}
secs() { date +%s.%N; }

# ---- the sandbox mode this machine allows
U=""
"$GQ" eval --task humaneval --control canonical --limit 1 > "$T/probe" 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then
    echo "$(grep -o "sandbox: .*" "$T/probe" | head -1)"
    p=$((p + 1))
elif [ "$rc" -eq 6 ] && grep -qF "the kernel refused the namespaces: " "$T/probe"; then
    has "refusal names the call" "gq eval: error: the kernel refused the namespaces: " "$T/probe"
    has "refusal says the way out" "--unsafe-no-sandbox runs it with limits only" "$T/probe"
    s=$((s + 1)); echo "SKIP eval-cli: the kernel refuses namespaces here ($(grep -o 'namespaces: .*(E[A-Z]*)' "$T/probe" | head -1)): the rest runs with --unsafe-no-sandbox"
    U="--unsafe-no-sandbox"
else
    f=$((f + 1)); echo "FAIL eval-cli: probe run: exit status $rc"; tail -5 "$T/probe"
fi
ev() { "$GQ" eval $U "$@"; }

# ---- README Usage vs --help
readme=${GQ_README:-README.md}
if [ -f "$readme" ]; then
    awk '/^## Usage/ {u = 1; next} u && /^```/ {if (b) exit; b = 1; next} b' "$readme" > "$T/usage"
    "$GQ" eval --help > "$T/help" 2>&1
    grep '^  --' "$T/help" | grep -vF '(testing)' | sed 's/^  --\([a-z0-9-]*\).*/\1/' | grep -vx help | sort -u > "$T/h"
    awk '/^gq / {on = ($2 == "eval")} on' "$T/usage" | grep -o -- '--[a-z0-9][a-z0-9-]*' | sed 's/^--//' | sort -u > "$T/r"
    nf=$f
    [ -s "$T/r" ] || { f=$((f + 1)); echo "FAIL eval-cli: README: no 'gq eval' line in the Usage block"; }
    for o in $(comm -23 "$T/h" "$T/r"); do f=$((f + 1)); echo "FAIL eval-cli: README: --$o is in 'gq eval --help' but not in the Usage block"; done
    for o in $(comm -13 "$T/h" "$T/r"); do f=$((f + 1)); echo "FAIL eval-cli: README: --$o is in the Usage block but not in 'gq eval --help'"; done
    [ "$f" -eq "$nf" ] && p=$((p + 1))
else
    s=$((s + 1)); echo "SKIP eval-cli: README: $readme not found"
fi

# ---- usage errors (exit 2), before anything runs
check "eval --help" 0 "$GQ" eval --help
check "gq --help lists eval" 0 "$GQ" --help
has "eval in the command list" "  eval "
check "no --task" 2 "$GQ" eval --control canonical
has "names what is missing" "gq eval: error: --task and one of --model, --samples and --control are required"
check "bad --task" 2 "$GQ" eval --task apps --control canonical
has "task choices" "--task: expected one of humaneval|mbpp, got 'apps'"
check "two sources" 2 "$GQ" eval --task mbpp --control canonical --samples "$T/x.jsonl"
has "one source" "give one of --model, --samples and --control"
check "--base without --model" 2 "$GQ" eval --task mbpp --base "$D/pycoder-5m" --control canonical
check "bad --k" 2 "$GQ" eval --task mbpp --control canonical --k 1,x
has "k message" "--k: expected a list of integers >= 1 such as 1,10, got '1,x'"
check "greedy samples" 2 "$GQ" eval --task mbpp --model "$T/none" --n-samples 5
has "greedy message" "greedy samples are all the same"
check "--resume without --out" 2 "$GQ" eval --task mbpp --control canonical --resume
check "--timeout 0" 2 "$GQ" eval --task mbpp --control canonical --timeout 0
check "--device tpu before loading" 2 "$GQ" eval --task mbpp --model "$T/none" --device tpu
check "a python that does not run: unsupported" 6 "$GQ" eval $U --task mbpp --control canonical --python /nonexistent/python3
has "says why" "/nonexistent/python3 -I -S does not run in the sandbox: sandbox setup failed: execve: No such file or directory"

# ---- controls: every canonical solution passes, every broken one fails
t0=$(secs)
check "humaneval canonical" 0 ev --task humaneval --control canonical --out "$T/he-canon.jsonl"
t1=$(secs)
has "humaneval canonical 164/164" "eval: canonical pass@1 = 1.0000 (164/164 samples passed, 164 problems x 1) canonical"
echo "humaneval canonical: 164 programs in $(awk "BEGIN {print $t1 - $t0}") s"
check "humaneval broken" 0 ev --task humaneval --control broken
has "humaneval broken 0/164" "eval: broken    pass@1 = 0.0000 (0/164 samples passed, 164 problems x 1) broken"
if [ -n "$GQ_TEST_QUICK" ]; then NM=100; LIM="--limit 100"; else NM=500; LIM=""; fi
t0=$(secs)
check "mbpp canonical" 0 ev --task mbpp --control canonical $LIM
t1=$(secs)
has "mbpp canonical $NM/$NM" "eval: canonical pass@1 = 1.0000 ($NM/$NM samples passed, $NM problems x 1) canonical"
echo "mbpp canonical: $NM programs in $(awk "BEGIN {print $t1 - $t0}") s"
check "mbpp broken" 0 ev --task mbpp --control broken $LIM
has "mbpp broken 0/$NM" "eval: broken    pass@1 = 0.0000 (0/$NM samples passed, $NM problems x 1) broken"
[ -n "$GQ_TEST_QUICK" ] && { s=$((s + 1)); echo "SKIP eval-cli: GQ_TEST_QUICK: MBPP controls on the first 100 problems (all 500 otherwise)"; }

# ---- the bundled data from another working directory (the source tree beside the binary), and GQ_DATA_DIR
GQA=$(cd "$(dirname "$GQ")" && pwd)/$(basename "$GQ")
check "from another directory" 0 sh -c "cd / && '$GQA' eval $U --task mbpp --control canonical --limit 2"
has "bundled data found" "calib/eval/mbpp/mbpp.jsonl"
check "GQ_DATA_DIR without the data: I/O" 3 env GQ_DATA_DIR="$T/nodata" "$GQ" eval $U --task humaneval --control canonical
has "names the file" "$T/nodata/calib/eval/humaneval/HumanEval.jsonl.gz: cannot open"

# ---- the records and the summary
J="$T/he-canon.jsonl"
count "one header line" 1 '{"gq_eval":{"data":"bundled","sources":[{"source":"canonical","tag":"canonical"}],"task":"humaneval"}}' "$J"
count "164 records" 164 '"source":"canonical","sample":0,"passed":true,"outcome":"passed","time":' "$J"
count "records carry the completion" 164 ',"completion":"' "$J"
has "first record" '{"task_id":"HumanEval/' "$J"
has "summary file" '"pass@1": 1.0' "$J.summary.json"
has "summary: sandbox" '"sandbox": "' "$J.summary.json"
check "existing --out" 10 ev --task humaneval --control canonical --out "$J"
has "exists message" "exists: --resume continues it, --force replaces it"

# ---- --samples: completions made elsewhere, hostile ones among them (HumanEval/0..9)
S="$T/samples.jsonl"
{
    printf '%s\n' '{"task_id": "HumanEval/0", "completion": "    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n"}'
    printf '%s\n' '{"task_id": "HumanEval/0", "completion": "    return True\n"}'
    printf '%s\n' '{"task_id": "HumanEval/2", "completion": "    return number % 1.0\n"}'
    printf '%s\n' '{"task_id": "HumanEval/3", "completion": "    while True:\n        pass\n"}'
    printf '%s\n' '{"task_id": "HumanEval/4", "completion": "    mean = sum(numbers) / len(numbers)\n    return sum(abs(x - mean) for x in numbers) / len(numbers)\n"}'
    printf '%s\n' '{"task_id": "HumanEval/5", "completion": "    pass\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"}'
    printf '%s\n' '{"task_id": "HumanEval/6", "completion": "    pass\nx = bytearray(8 << 30)\n"}'
    printf '%s\n' '{"task_id": "HumanEval/7", "completion": "    pass\nimport os\nos.kill(os.getppid(), 9)\n"}'
    printf '%s\n' '{"task_id": "HumanEval/8", "completion": "    pass\nopen(\"../escape\", \"w\").write(\"x\")\n"}'
    printf '%s\n' '{"task_id": "HumanEval/9", "completion": "    return (\n"}'
} > "$S"
t0=$(secs)
check "samples with hostile completions" 0 ev --task humaneval --samples "$S" --limit 10 --timeout 2 --out "$T/s.jsonl"
t1=$(secs)
echo "samples: 10 programs (3 of them killed at the 2 s limits) in $(awk "BEGIN {print $t1 - $t0}") s"
has "samples: pass@1 over the 9 problems with samples" "eval: samples   pass@1 = 0.2778 (3/10 samples passed, 9 problems x 1+)"
has "samples: a problem without samples is named" "1 problems have no sample: left out of the scores"
count "two samples of HumanEval/0, one passes" 1 '{"task_id":"HumanEval/0","source":"samples","sample":0,"passed":true' "$T/s.jsonl"
count "the second fails" 1 '{"task_id":"HumanEval/0","source":"samples","sample":1,"passed":false,"outcome":"assertion"' "$T/s.jsonl"
if grep -qE '"task_id":"HumanEval/3",.*"outcome":"(cpu|timeout)"' "$T/s.jsonl"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL eval-cli: the infinite loop is not a cpu/timeout outcome"; grep HumanEval/3 "$T/s.jsonl"; fi
if grep -qE '"task_id":"HumanEval/5",.*"outcome":"(cpu|timeout)"' "$T/s.jsonl"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL eval-cli: the fork bomb is not a cpu/timeout outcome"; grep HumanEval/5 "$T/s.jsonl"; fi
count "the memory hog: MemoryError" 1 '"task_id":"HumanEval/6","source":"samples","sample":0,"passed":false,"outcome":"memory"' "$T/s.jsonl"
count "killing the parent passes no test" 1 '"task_id":"HumanEval/7","source":"samples","sample":0,"passed":false' "$T/s.jsonl"
count "writing ../ fails" 1 '"task_id":"HumanEval/8","source":"samples","sample":0,"passed":false,"outcome":"exception"' "$T/s.jsonl"
count "a syntax error" 1 '"task_id":"HumanEval/9","source":"samples","sample":0,"passed":false,"outcome":"syntax"' "$T/s.jsonl"
printf '{"task_id": 11, "completion": "def remove_Occ(s,ch):\\n    return s.replace(ch, \\"\\", 1)[::-1].replace(ch, \\"\\", 1)[::-1]\\n"}\n{"task_id": "Mbpp/12", "completion": "def sort_matrix(M):\\n    return sorted(M, key=sum)\\n"}\n' > "$T/mbpp-samples.jsonl"
check "mbpp samples, integer and Mbpp/ ids" 0 ev --task mbpp --samples "$T/mbpp-samples.jsonl" --limit 2
has "mbpp samples pass" "eval: samples   pass@1 = 1.0000 (2/2 samples passed, 2 problems x 1) $T/mbpp-samples.jsonl"
printf '{"task_id": "HumanEval/999", "completion": ""}\n' > "$T/bad-samples.jsonl"
check "unknown task id: data error" 11 ev --task humaneval --samples "$T/bad-samples.jsonl"
has "names the line" "bad-samples.jsonl:1: task_id \"HumanEval/999\" is not a humaneval problem of "

# ---- --resume: what is in --out is not run again; a torn last line is cut
R="$T/r.jsonl"
check "resume: first part" 0 ev --task humaneval --control canonical --limit 4 --out "$R"
printf '{"task_id":"HumanEval/4","source":"canonical","sam' >> "$R"
check "resume: the rest" 0 ev --task humaneval --control canonical --limit 10 --out "$R" --resume
has "resume: what was done" "resume: 4 samples already in $R"
has "resume: torn tail cut" "cut a torn batch of"
has "resume: the whole" "eval: canonical pass@1 = 1.0000 (10/10 samples passed, 10 problems x 1) canonical"
count "resume: 10 records and the header" 11 '{' "$R"
check "resume with other settings" 11 ev --task humaneval --control broken --limit 10 --out "$R" --resume
has "resume: settings differ" "made with other settings: sources was"

# ---- generation: pycoder-5m on the CPU (greedy, 3 problems), then against an RTN int4 of it
G="$T/gen.jsonl"
check "generation on the CPU" 0 ev --task humaneval --model "$D/pycoder-5m" --limit 3 --device cpu --threads 1 \
    --max-new-tokens 48 --out "$G"
has "generation: a score line" "eval: model     pass@1 = "
has "generation: 3 samples" "samples passed, 3 problems x 1) $D/pycoder-5m"
count "generation: records with tokens and finish" 3 '"tokens":' "$G"
has "generation: settings in the header" '"max_new_tokens":48,"n_samples":1,"seed":0' "$G"
check "generation resumed: nothing to do" 0 ev --task humaneval --model "$D/pycoder-5m" --limit 3 --device cpu --threads 1 \
    --max-new-tokens 48 --out "$G" --resume
has "generation resumed" "model: every sample is done already"
check "rtn int4 of pycoder-5m" 0 "$GQ" quantize --model "$D/pycoder-5m" --out "$T/int4" --method rtn
check "--base: fp16 and int4 side by side" 0 ev --task mbpp --model "$T/int4" --base "$D/pycoder-5m" --limit 2 --device cpu \
    --threads 1 --max-new-tokens 32 --out "$T/base.jsonl"
has "--base: base line" "eval: base      pass@1 = "
has "--base: model line" "eval: model     pass@1 = "
has "--base: the difference" "eval: model - base: pass@1 "
count "--base: both sources recorded" 2 '"source":"base"' "$T/base.jsonl"
has "--base: summary" '"source": "base"' "$T/base.jsonl.summary.json"
check "sampled, 2 per problem, pass@1 and pass@2" 0 ev --task mbpp --model "$D/pycoder-5m" --limit 2 --device cpu --threads 1 \
    --max-new-tokens 16 --n-samples 2 --temperature 0.8 --k 1,2,10
has "pass@k for k <= n" " pass@2 = "
# chat: a copy of pycoder-5m with a chat template whose generation prompt opens a code block
C="$T/chat-model"
mkdir -p "$C"
for x in config.json model.safetensors tokenizer.json special_tokens_map.json generation_config.json; do
    ln -s "$(cd "$D/pycoder-5m" && pwd)/$x" "$C/$x"
done
printf '%s\n' '{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true, "add_eos_token": false, "chat_template": "{% for m in messages %}### User:\n{{ m['"'"'content'"'"'] }}\n{% endfor %}{% if add_generation_prompt %}### Assistant:\n```python\n{% endif %}"}' > "$C/tokenizer_config.json"
check "--template chat" 0 ev --task humaneval --model "$C" --template chat --limit 2 --device cpu --threads 1 \
    --max-new-tokens 32 --out "$T/chat.jsonl"
count "chat: records keep the answer" 2 '"answer":' "$T/chat.jsonl"

# ---- the refusal path, where this machine allows namespaces: a user namespace without a uid map refuses nested ones
if [ -z "$U" ]; then
    if unshare -U true 2> /dev/null; then
        check "refused namespaces: refused" 6 unshare -U "$GQ" eval --task humaneval --control canonical --limit 2
        has "refusal: the call and errno" "the kernel refused the namespaces: clone(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWNET|CLONE_NEWIPC|CLONE_NEWUTS): "
        has "refusal: the way out" "gq will not run untrusted code without a sandbox (--unsafe-no-sandbox runs it with limits only)"
        check "refused namespaces: --unsafe-no-sandbox" 0 unshare -U "$GQ" eval --task humaneval --control canonical --limit 2 \
            --unsafe-no-sandbox
        has "unsafe: warned" "running untrusted code WITHOUT a sandbox (--unsafe-no-sandbox)"
        has "unsafe: ran" "eval: canonical pass@1 = 1.0000 (2/2 samples passed"
    else
        s=$((s + 1)); echo "SKIP eval-cli: unshare -U is refused here: the refusal path is not simulated (namespaces work)"
    fi
fi

rm -rf "$T"
echo "test_eval_cli.sh: $p passed, $f failed, $s skipped"
echo "RESULT $p $f $s"
[ "$f" -eq 0 ]
