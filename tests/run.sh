#!/bin/sh
# tests/run.sh -- run every test program and script, sum their RESULT lines.
# Usage: tests/run.sh build/tests/test_a build/tests/test_b ...
# Each test prints "RESULT <passed> <failed> <skipped>" last; a test that
# crashes or prints no RESULT counts as one failure. Scripts tests/test_*.sh
# run after the programs, with GQ_BIN pointing at the gq binary.
# The last line is "N passed, N failed".
# GQ_TEST_FILTER=substr runs only the tests whose name contains substr.
passed=0; failed=0; skipped=0
log=${TMPDIR:-/tmp}/gq-test-$$.log
start=$(date +%s)
for t in "$@" tests/test_*.sh; do
    [ -e "$t" ] || continue
    name=$(basename "$t")
    if [ -n "$GQ_TEST_FILTER" ]; then
        case "$name" in *"$GQ_TEST_FILTER"*) ;; *) continue ;; esac
    fi
    t0=$(date +%s)
    case "$t" in
        *.sh) sh "$t" >"$log" 2>&1; rc=$? ;;
        *) "$t" >"$log" 2>&1; rc=$? ;;
    esac
    t1=$(date +%s)
    res=$(grep '^RESULT ' "$log" | tail -n 1)
    if [ -z "$res" ]; then
        cat "$log"
        echo "CRASH $name (exit status $rc, no RESULT line)"
        failed=$((failed + 1))
        continue
    fi
    p=$(echo "$res" | cut -d' ' -f2); f=$(echo "$res" | cut -d' ' -f3); s=$(echo "$res" | cut -d' ' -f4)
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name exited with status $rc"
        f=1
    fi
    if [ "$f" -ne 0 ]; then
        echo "---- last 80 lines of $name's output:"
        tail -n 80 "$log"
        echo "----"
    else
        grep -E '^SKIP' "$log"
    fi
    echo "$name: $p passed, $f failed, $s skipped ($((t1 - t0)) s)"
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
rm -f "$log"
echo "total time $(( $(date +%s) - start )) s; $skipped checks skipped (reasons above)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
