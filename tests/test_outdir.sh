#!/bin/sh
# tests/test_outdir.sh -- gq quantize never loses a user's files: concurrent runs on one --out,
# --force misuse, an unfinished run kept, kill -9 at several layers then --resume, a file-size
# limit. Each case says what must be left behind. Run by tests/run.sh (GQ_BIN points at the
# binary); prints "RESULT p f s". docs/testing.md lists these fault cases.
GQ=${GQ_BIN:-build/gq}
case "$GQ" in /*) ;; *) GQ="$(pwd)/$GQ" ;; esac
D=${GQ_TEST_DATA:-tests/data}
case "$D" in /*) ;; *) D="$(pwd)/$D" ;; esac
T=${TMPDIR:-/tmp}/gq-test-outdir-$$
rm -rf "$T"
mkdir -p "$T"
M=$D/pycoder-5m
p=0; f=0; s=0
ok() { p=$((p + 1)); }
bad() { f=$((f + 1)); echo "FAIL outdir: $1"; [ -f "$T/out" ] && tail -5 "$T/out"; }
run() { # run "what" want command...: output in $T/out; want is the exit status (README: 2 usage, 3 I/O,
    # 10 output exists or in use)
    what=$1 want=$2
    shift 2
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then ok; else bad "$what: exit status $rc, expected $want"; fi
}
has() { if grep -qF -- "$2" "$T/out"; then ok; else bad "$1: output lacks '$2'"; fi; }
exists() { if [ -e "$2" ]; then ok; else bad "$1: $2 is missing"; fi; }
absent() { if [ ! -e "$2" ]; then ok; else bad "$1: $2 is still there"; fi; }
none_like() { # none_like "what" GLOB...: no path matches
    what=$1
    shift
    for x in "$@"; do if [ -e "$x" ]; then bad "$what: $x is left behind"; return; fi; done
    ok
}
sum() { cat "$@" | cksum; }
wait_for() { # wait_for FILE TEXT: up to 60 s for FILE to contain TEXT
    i=0
    while [ $i -lt 1200 ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05; i=$((i + 1))
    done
    return 1
}
# the CPU backend everywhere: these cases are about files, and a GPU would finish before a second run or a kill comes
Q="quantize --device cpu --model $M --nsamples 16 --seqlen 256"

# ---- 1. --out that is, contains or lies inside the model, whatever the flags --------------------
cp -r "$M" "$T/m"
ln -s "$T/m" "$T/mlink"
before=$(sum "$T"/m/*)
for out in "$T/m" "$T/m/" "$T" "$T/m/q" "$T/mlink" "$T/m/x/.." "$T/mlink/../m/q"; do
    run "--out $out vs --model $T/m" 2 $GQ quantize --model "$T/m" --out "$out" --method rtn --force
    has "--out $out refused" "gq never writes into or replaces its inputs"
done
run "--model through a link, --out its target" 2 $GQ quantize --model "$T/mlink" --out "$T/m" --method rtn --force
[ "$(sum "$T"/m/*)" = "$before" ] && ok || bad "the model's files changed"
exists "the model is intact" "$T/m/model.safetensors"
absent "no lock beside the model" "$T/m.lock"

# ---- 2. --force on a directory gq did not write -------------------------------------------------
mkdir -p "$T/home"
echo precious > "$T/home/notes.txt"
run "--force on a user directory" 10 $GQ quantize --model "$M" --out "$T/home" --method rtn --force
has "user directory refused" "--force replaces only a checkpoint gq wrote"
exists "the user's file stays" "$T/home/notes.txt"
run "--force on a previous output" 0 $GQ quantize --model "$M" --out "$T/q" --method rtn
run "--force replaces gq's own output" 0 $GQ quantize --model "$M" --out "$T/q" --method rtn --force
none_like "nothing beside it" "$T"/q.tmp.* "$T"/q.old.* "$T/q.lock" "$T/q.partial"

# ---- 3. two runs on one --out at once -----------------------------------------------------------
$GQ $Q --asym --out "$T/c" > "$T/a.log" 2>&1 &
A=$!
if wait_for "$T/a.log" "calibration:"; then
    run "a second run while the first works" 10 $GQ $Q --out "$T/c" --force
    has "second run refused" "is in use by another gq run (pid $A"
    run "a second --resume while the first works" 10 $GQ $Q --asym --out "$T/c" --resume
    has "second --resume refused" "in use by another gq run"
else
    bad "the first run did not start: $(tail -2 "$T/a.log")"
fi
wait $A
rcA=$?
[ "$rcA" -eq 0 ] && ok || bad "the first run exited $rcA: $(tail -2 "$T/a.log")"
run "inspect the first run's output" 0 $GQ inspect "$T/c"
has "its config is its own (asym)" "asymmetric"
none_like "the first run cleaned up" "$T/c.lock" "$T/c.partial" "$T"/c.tmp.*

# ---- 4. an unfinished run is kept unless --force; kill -9 at several layers, then --resume ----
$GQ $Q --out "$T/ref" > "$T/ref.log" 2>&1 || bad "uninterrupted reference run: $(tail -2 "$T/ref.log")"
for at in 1 3; do
    K=$T/k$at
    $GQ $Q --out "$K" > "$T/k.log" 2>&1 &
    B=$!
    if wait_for "$K.partial/state.json" "\"layers_done\": $at"; then
        kill -9 $B
        wait $B 2>/dev/null
        exists "kill -9 after layer $at: the lock stays" "$K.lock"
        mkdir -p "$K.tmp.999999" # as if a run died while assembling its output
        run "rerun without flags after kill at layer $at" 10 $GQ $Q --out "$K"
        has "says the run died" "no longer running; --resume continues its work, --force discards it"
        exists "the unfinished run is kept" "$K.partial/state.json"
        run "--resume after kill at layer $at" 0 $GQ $Q --out "$K" --resume
        has "resumes after the finished layers" "resuming: $at of 4 layers"
        cmp -s "$K/model.safetensors" "$T/ref/model.safetensors" && ok ||
            bad "kill at layer $at + --resume: model.safetensors differs from the uninterrupted run's"
        none_like "after --resume" "$K.lock" "$K.partial" "$K".tmp.*
        grep -q '"modules_quantized": 28' "$K/gq_report.json" && ok ||
            bad "kill at layer $at: gq_report.json lists $(grep modules_quantized "$K/gq_report.json")"
        l1=$(grep '"total_loss"' "$K/gq_report.json")
        l2=$(grep '"total_loss"' "$T/ref/gq_report.json")
        [ "$l1" = "$l2" ] && ok || bad "kill at layer $at: total loss $l1, uninterrupted $l2"
    else
        kill -9 $B 2>/dev/null
        wait $B 2>/dev/null
        bad "kill at layer $at: the run never reached layer $at: $(tail -2 "$T/k.log")"
    fi
done
run "stop after 2 layers" 0 $GQ $Q --out "$T/u" --max-layers 2
run "rerun without --resume" 10 $GQ $Q --out "$T/u"
has "names the unfinished run" "an unfinished run (2 of 4 layers done) is kept there; continue it with --resume"
exists "the unfinished run is kept" "$T/u.partial/layer-00001.safetensors"
run "other settings refuse to resume" 2 $GQ $Q --out "$T/u" --resume --bits 3
has "names the difference" "bits: 3 now, 4 then"
run "another CPU thread count refuses to resume (other sums)" 2 $GQ $Q --out "$T/u" --resume --threads 7
has "names the thread count" "cpu_threads: 7 now"
run "--force discards" 0 $GQ $Q --out "$T/u" --max-layers 1 --force
has "discard said" "discarding the unfinished run in $T/u.partial (2 layers done; --force)"
run "a path spelled otherwise resumes" 0 $GQ quantize --device cpu --model "$M/" --nsamples 16 --seqlen 256 --out "$T/./u/" --resume
has "resumed from the layer kept" "resuming: 1 of 4 layers"

# ---- 5. a file-size limit (SIGXFSZ) ------------------------------------------------------------
(ulimit -f 64 && exec $GQ quantize --model "$M" --out "$T/fs" --method rtn) > "$T/out" 2>&1
rc=$?
[ "$rc" -eq 3 ] && ok || bad "file-size limit: exit status $rc, expected 3 (an I/O error, not a SIGXFSZ kill: 153)"
has "file-size limit reported" "File too large"
none_like "file-size limit leaves no temporary output" "$T"/fs.tmp.* "$T/fs.lock" "$T/fs"

# ---- 6. a full disk (a 2 MiB tmpfs in a private mount namespace; skipped where mounts are refused) -----
mkdir -p "$T/full"
if unshare -m sh -c "mount -t tmpfs -o size=2m tmpfs '$T/full' 2>/dev/null || exit 99
    $GQ quantize --model '$M' --out '$T/full/q' --method rtn > '$T/out' 2>&1
    echo \$? > '$T/full.rc'
    ls -a '$T/full' > '$T/full.ls'
    ls '$T/full/q.partial' > '$T/full.partial' 2>/dev/null
    exit 0"; then
    rc=$(cat "$T/full.rc")
    [ "$rc" -eq 3 ] && ok || bad "disk full: exit status $rc, expected 3 (I/O)"
    has "disk full reported" "No space left on device"
    if grep -qE '^q$|^q\.tmp\.|^q\.lock$|^\..*\.tmp' "$T/full.ls"; then bad "disk full left: $(tr '\n' ' ' < "$T/full.ls")"; else ok; fi
    grep -q 'state.json' "$T/full.partial" && ok || bad "disk full: the finished layers were not kept in q.partial"
else
    s=$((s + 1)); echo "SKIP outdir: disk full: cannot mount a tmpfs here (needs root and mount namespaces)"
fi

rm -rf "$T"
echo "test_outdir.sh: $p passed, $f failed, $s skipped"
echo "RESULT $p $f $s"
[ "$f" -eq 0 ]
