#!/bin/sh
# tests/test_calib_cli.sh -- `gq calib` through the binary: a run that leaves no record fails
# and says why (how many questions, how many answers each rule dropped, too-long prompts, drops
# of an earlier run); messages carry "gq calib: error: " once. Model: tests/data/pycoder-5m
# (CPU, one thread, answers of at most 4 tokens, so every answer is "short" under the default
# --min-answer-tokens 8). Run by tests/run.sh (GQ_BIN points at the binary). Prints RESULT p f s.
GQ=${GQ_BIN:-build/gq}
D=${GQ_TEST_DATA:-tests/data}
T=${TMPDIR:-/tmp}/gq-test-calib-cli-$$
mkdir -p "$T"
p=0; f=0
check() { # check "what" expected-status command...: status and stderr/stdout kept in $T/out
    what=$1 want=$2
    shift 2
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL calib-cli: $what: exit status $rc, expected $want"; tail -3 "$T/out"; fi
}
fails() { # fails "what" command...: a non-zero status that is not a usage error (2) nor a crash (> 125)
    what=$1
    shift
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ] && [ "$rc" -le 125 ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL calib-cli: $what: exit status $rc, expected an error status"; tail -3 "$T/out"; fi
}
has() { # has "what" "text": the last command's output contains text
    if grep -qF -- "$2" "$T/out"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL calib-cli: $1: output lacks '$2'"; tail -3 "$T/out"; fi
}
lacks() { # lacks "what" "text": the last command's output does not contain text
    if grep -qF -- "$2" "$T/out"; then f=$((f + 1)); echo "FAIL calib-cli: $1: output has '$2'"; grep -F -- "$2" "$T/out" | head -2; else p=$((p + 1)); fi
}
calib() { # the common options: pycoder-5m on the CPU, answers of at most 4 tokens
    "$GQ" calib --model "$D/pycoder-5m" --device cpu --threads 1 --max-new-tokens 4 "$@"
}
printf 'def add(a, b):\nclass Stack:\n' > "$T/q.txt"
: > "$T/empty.txt"
printf 'x = 1 %.0s' $(seq 1 1500) > "$T/long.txt" # one question of about 6000 tokens (the model has 2048 positions)

check "calib --help" 0 "$GQ" calib --help
check "calib without --out" 2 "$GQ" calib --model "$D/pycoder-5m" --questions "$T/q.txt"
has "missing options named" "gq calib: error: --model, --questions and --out are required"
check "calib --batch 0" 2 calib --questions "$T/q.txt" --out "$T/o.jsonl" --batch 0
has "bad --batch" "gq calib: error: --batch: expected >= 1, got 0"
lacks "no doubled prefix" "error: gq calib:"

fails "every answer short" calib --questions "$T/q.txt" --out "$T/o.jsonl"
has "no records: the file and why" "gq calib: error: $T/o.jsonl: no records written, the file holds none: 2 questions from $T/q.txt: 2 answers generated, all dropped: 2 short (fewer than 8 tokens, --min-answer-tokens)"
lacks "no success line" "records written to"
lacks "no doubled prefix" "error: gq calib:"
fails "resume of a file without records" calib --questions "$T/q.txt" --out "$T/o.jsonl" --resume
has "drops of the earlier run named" "2 dropped by an earlier run (listed in $T/o.jsonl.dropped; --force starts anew)"
fails "--n 1, short" calib --questions "$T/q.txt" --out "$T/n.jsonl" --n 1
has "--n named" "1 question from $T/q.txt (--n 1): 1 answer generated, all dropped: 1 short (fewer than 8 tokens"
fails "a prompt too long for the model" calib --questions "$T/long.txt" --out "$T/l.jsonl"
has "too long named" "1 question from $T/long.txt: 1 too long (the prompt leaves no room within max_position_embeddings 2048)"
fails "no questions" calib --questions "$T/empty.txt" --out "$T/e.jsonl"
has "no questions named" "no questions found"
# the same questions with the rules relaxed write both records and succeed
check "records written" 0 calib --questions "$T/q.txt" --out "$T/o.jsonl" --force --min-answer-tokens 1 --degenerate-period 0
has "success line" "calib: 2 records written to $T/o.jsonl (2 in the file), 0 dropped"
rm -rf "$T"
echo "test_calib_cli.sh: $p passed, $f failed, 0 skipped"
echo "RESULT $p $f 0"
[ "$f" -eq 0 ]
