#!/bin/sh
# tests/run.sh -- run every test program and script, sum their RESULT lines.
# Usage: tests/run.sh build/tests/test_a build/tests/test_b ...
# Each test prints "RESULT <passed> <failed> <skipped>" last; a test that
# crashes or prints no RESULT counts as one failure. Scripts tests/test_*.sh
# run after the programs, with GQ_BIN pointing at the gq binary.
# GQ_SAN_TESTS="san/tests/test_a ..." with GQ_SAN_BUILD=san (make test sets
# both): then a second pass, the programs GQ_SAN_TESTS (built with
# AddressSanitizer + UBSan) and the scripts with GQ_BIN=$GQ_SAN_BUILD/gq,
# always quick (GQ_TEST_QUICK=1); its lines start with "[san]".
# The last line is "N passed, N failed", over both passes.
# GQ_TEST_FILTER=substr runs only the tests whose name contains substr.
# Undefined behaviour fails a test: UBSan halts on the first report
# (UBSAN_OPTIONS, unless set, is halt_on_error=1:print_stacktrace=1);
# AddressSanitizer halts by itself, and reports leaks at exit.
passed=0; failed=0; skipped=0
log=${TMPDIR:-/tmp}/gq-test-$$.log
start=$(date +%s)
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# run_one LABEL FILE: one program or script; its RESULT added to the totals
run_one() {
    label=$1 t=$2
    [ -e "$t" ] || return 0
    name=$(basename "$t")
    if [ -n "$GQ_TEST_FILTER" ]; then
        case "$name" in *"$GQ_TEST_FILTER"*) ;; *) return 0 ;; esac
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
        echo "CRASH $label$name (exit status $rc, no RESULT line)"
        failed=$((failed + 1))
        return 0
    fi
    p=$(echo "$res" | cut -d' ' -f2); f=$(echo "$res" | cut -d' ' -f3); s=$(echo "$res" | cut -d' ' -f4)
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $label$name exited with status $rc"
        f=1
    fi
    if [ "$f" -ne 0 ]; then
        echo "---- last 80 lines of $label$name's output:"
        tail -n 80 "$log"
        echo "----"
    else
        grep -E '^SKIP' "$log"
    fi
    echo "$label$name: $p passed, $f failed, $s skipped ($((t1 - t0)) s)"
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

for t in "$@" tests/test_*.sh; do run_one "" "$t"; done
if [ -n "${GQ_SAN_TESTS:-}" ]; then
    san0=$(date +%s)
    echo "---- the quick suite again, built with AddressSanitizer + UBSan (${GQ_SAN_BUILD:-?}/)"
    export GQ_BIN="$GQ_SAN_BUILD/gq" GQ_BUILD="$GQ_SAN_BUILD" GQ_TEST_QUICK=1
    export SAN=1 # a nested make (test_install.sh) builds in GQ_BUILD with its flags
    for t in $GQ_SAN_TESTS tests/test_*.sh; do run_one "[san] " "$t"; done
    echo "sanitizer pass: $(( $(date +%s) - san0 )) s"
fi
rm -f "$log"
echo "total time $(( $(date +%s) - start )) s; $skipped checks skipped (reasons above)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
