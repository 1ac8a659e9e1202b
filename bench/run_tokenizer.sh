#!/bin/sh
# bench/run_tokenizer.sh -- gq's tokenizer vs Hugging Face `tokenizers`, one core each,
# on tests/data/text/python-stdlib-eval.txt, for the four tokenizers of the tests.
#   sh bench/run_tokenizer.sh [RUNS]        (from the repository root; default 10 runs)
# Both sides are pinned to CPU 0 with taskset when it exists. Results: docs/bench-tokenizer.md.
set -e
cd "$(dirname "$0")/.."
RUNS=${1:-10}
TEXT=tests/data/text/python-stdlib-eval.txt
make -s CUDA=0 build/bench/bench_tokenizer >/dev/null
PIN=""
command -v taskset >/dev/null 2>&1 && PIN="taskset -c 0"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; text: $TEXT ($(wc -c <"$TEXT") bytes); runs: $RUNS"
for m in tests/data/pycoder-5m tests/data/tokenizers/llama2 tests/data/tok/llama3ish tests/data/tok/metaspace; do
    $PIN ./build/bench/bench_tokenizer --model "$m" --text "$TEXT" --runs "$RUNS"
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $PIN python3 bench/bench_tokenizer_hf.py --model "$m" --text "$TEXT" --runs "$RUNS"
done
