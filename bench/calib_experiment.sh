#!/bin/sh
# bench/calib_experiment.sh -- the calibration-data experiment of docs/calibration.md
# on pycoder-30m, on a GPU machine (bench/gpu.sh calib; logs and results in
# $LOGS). Steps:
#   1. self-generated calibration set: pycoder-30m answers the HumanEval + MBPP
#      questions (temperature 0.8, top-p 0.95, seed 0, up to 512 new tokens: the
#      greedy answers of a model this small are nearly all degenerate repetitions)
#                                                 -> $LOGS/pycoder-30m-selfgen.jsonl.gz
#   2. model-generated evaluation text: continuations of 300 stdlib function
#      headers (temperature 0.8, top-p 0.95, seed 1, 256 new tokens)
#   3. int4 g128 sym GPTQ with (a) the generic corpus, (b) the self-generated
#      set, (c) the questions alone, each concat-windowed to the same number of
#      2048-token windows (what (c) can fill)
#   4. perplexity of fp16 and (a)-(c) on python-stdlib-eval.txt and on the
#      generated text
set -u
LOGS=${LOGS:-gpu-logs}
mkdir -p "$LOGS"
GQ=./build/gq
M=${M:-bench-models/pycoder-30m}
DEV=${DEV:-cuda}
NQ=${NQ:-0}     # dry runs: only the first NQ questions / prompts
Q=calib/questions
R="$LOGS/calib_experiment.txt"
: > "$R"
[ -f "$M/config.json" ] || [ "$M" != bench-models/pycoder-30m ] || python3 bench/modelpack.py unpack .m30pack "$M" || exit 1
t0=$(date +%s)
$GQ calib --model $M --questions $Q/humaneval-mbpp.jsonl.gz --out "$LOGS/pycoder-30m-selfgen.jsonl.gz" \
    --max-new-tokens 512 --temperature 0.8 --top-p 0.95 --seed 0 --batch 128 --device $DEV --n $NQ --force \
    > "$LOGS/selfgen.log" 2>&1 || { tail -20 "$LOGS/selfgen.log"; exit 1; }
echo "selfgen: $(( $(date +%s) - t0 )) s; $(tail -n 6 "$LOGS/selfgen.log" | tr '\n' ' ')" | tee -a "$R"
$GQ calib --model $M --questions $Q/stdlib-prompts.jsonl --out bench-models/evalgen.jsonl \
    --max-new-tokens 256 --temperature 0.8 --top-p 0.95 --seed 1 --batch 128 --device $DEV --n $NQ --force \
    > "$LOGS/evalgen.log" 2>&1 || { tail -20 "$LOGS/evalgen.log"; exit 1; }
python3 -c "
import json, sys
with open('bench-models/evalgen.txt', 'w') as f:
    for line in open('bench-models/evalgen.jsonl'):
        r = json.loads(line)
        f.write(r['question'] + r['answer'] + '\n\n')
"
# windows: as many 2048-token windows as the questions alone fill (capped at 128);
# gq's own count, from its "too little calibration data" message
NS=$($GQ quantize --model $M --out bench-models/unused --calib $Q/humaneval-mbpp-text.jsonl.gz --windowing concat \
    --nsamples 100000 --device cpu 2>&1 | sed -n 's/.* tokens, \([0-9]*\) windows.*/\1/p')
[ -n "$NS" ] || { echo "could not count the windows of the questions"; exit 1; }
[ "$NS" -gt 128 ] && NS=128
echo "questions alone fill $NS windows of 2048 tokens: the budget of every calibration set" | tee -a "$R"
ppl_line() { $GQ ppl --model "$1" --text "$2" --device $DEV 2>/dev/null | awk '/^ppl =/ {print $3}'; }
printf '%-22s %12s %14s\n' "model" "stdlib ppl" "generated ppl" | tee -a "$R"
printf '%-22s %12s %14s\n' "fp16" "$(ppl_line $M tests/data/text/python-stdlib-eval.txt)" \
    "$(ppl_line $M bench-models/evalgen.txt)" | tee -a "$R"
for set in "a_generic:calib/python-sitepackages.jsonl" "b_selfgen:$LOGS/pycoder-30m-selfgen.jsonl.gz" \
    "c_questions:$Q/humaneval-mbpp-text.jsonl.gz"; do
    name=${set%%:*}
    file=${set#*:}
    $GQ quantize --model $M --out "bench-models/q30-$name" --calib "$file" --windowing concat --nsamples $NS \
        --device $DEV --force > "$LOGS/q_$name.log" 2>&1 || { tail -5 "$LOGS/q_$name.log"; continue; }
    printf '%-22s %12s %14s\n' "$name" "$(ppl_line bench-models/q30-$name tests/data/text/python-stdlib-eval.txt)" \
        "$(ppl_line bench-models/q30-$name bench-models/evalgen.txt)" | tee -a "$R"
done
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$R"
