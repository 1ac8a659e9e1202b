#!/bin/sh
# bench/peer.sh -- gq and its peer, llm-compressor's GPTQModifier, side by side: the same
# synthetic Llama-2-7B checkpoint, the same 128 x 2048 calibration tokens, the same GPU, one
# device call (issue 14; docs/peer.md). Writes $OUT/peer.json (both runs' times and settings),
# $OUT/peer.txt (the summary) and $OUT/peer-logs.tar.gz; prints the summary last.
#
#   sh bench/peer.sh [STEP ...]     steps: build deps synth gq peer (default: all of them)
#
# deps   install the wheels of .whl/ (bench/peer-wheels.sh; carried) into /tmp/site, those the
#        machine lacks: llmcompressor and compressed-tensors always, their needs only where
#        python3 has no (new enough) copy; then PYTHONPATH=/tmp/site
# build  make CUDA=1 (gq), as bench/gpu.sh does (.gqdeps.tar.xz where the machine lacks the
#        libraries); runs in the background while deps and synth run
# synth  bench-models/synth-7b (bench/make_synth_model.py --shape 7b), unless it is there
# gq     gq quantize, gq's default profile, --device cuda
# peer   python3 bench/peer_llmcompressor.py (its default profile is gq's; docs/peer.md)
#
# The steps run one after another; gq and the peer never share the GPU. A device call may run
# 600 s: the peer gets what is left until PEER_DEADLINE (default 585) seconds after the start;
# if that runs out, peer.json says how many layers it finished and when (the per-layer times
# are in peer-progress.jsonl). Environment: OUT (default gpu-logs), PEER_DEADLINE, GQ_ARGS
# (more gq quantize options), PEER_ARGS (more peer_llmcompressor.py options, e.g.
# "--observer minmax" or "--offload-device cuda"), PEER_MODEL (another checkpoint instead of
# bench-models/synth-7b), PEER_GQ_DEVICE (default cuda). Outputs: bench-models/q-synth-7b (gq),
# bench-models/llmc-synth-7b (llm-compressor); logs in gpu-logs/peer/.
set -u
# local checkpoints only (the GPU machine reaches no network); fewer progress-bar redraws in the logs
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_MININTERVAL="${TQDM_MININTERVAL:-5}"
OUT=${OUT:-gpu-logs}
LOGS=gpu-logs/peer     # git-ignored; $OUT gets peer.json, peer.txt, peer-logs.tar.gz
mkdir -p "$OUT" "$LOGS" bench-models
T0=$(date +%s)
PEER_DEADLINE=${PEER_DEADLINE:-585}
GQ=./build/gq
SYNTH=${PEER_MODEL:-bench-models/synth-7b}
GQ_DEVICE=${PEER_GQ_DEVICE:-cuda}
GQ_OUT=bench-models/q-$(basename "$SYNTH")
PEER_OUT=bench-models/llmc-$(basename "$SYNTH")
CALIB=calib/python-sitepackages.jsonl
SUMMARY=$LOGS/peer.txt
[ -f "$SUMMARY" ] || : > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
now() { date +%s.%N; }
elapsed() { echo $(($(date +%s) - T0)); }

# Libraries as in bench/gpu.sh: the machine's own, else .gqdeps.tar.xz (carried).
MAKEVARS="CUDA=1"
if [ ! -f /usr/include/jansson.h ] || [ ! -f /usr/include/pcre2.h ] || [ ! -f /usr/include/lapacke.h ]; then
    if [ -f .gqdeps.tar.xz ]; then
        [ -d .gqdeps ] || { mkdir -p .gqdeps && tar xJf .gqdeps.tar.xz -C .gqdeps; }
        MAKEVARS="CUDA=1 DEPS=.gqdeps/usr"
    fi
fi

step_deps() {
    [ -d .whl ] || { say "deps: no .whl/ (run sh bench/peer-wheels.sh here and carry .whl)"; return 1; }
    # which wheels: llmcompressor + compressed-tensors, and of their requirements (followed through
    # the wheels shipped) those python3 lacks or has too old; requirements not shipped (torch,
    # transformers, datasets, ...) are only reported
    if ! python3 - > "$LOGS/wheels.txt" 2> "$LOGS/wheels.log" <<'EOF'
import glob, importlib.metadata as md, os, re, sys, zipfile
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
whl = {}
for f in sorted(glob.glob(".whl/*.whl")):
    n = canon(os.path.basename(f).split("-")[0])
    if n in whl:
        sys.exit(f"two versions of {n} in .whl/: {whl[n]} and {f}")
    whl[n] = f
def have(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return None
def requires(f):
    z = zipfile.ZipFile(f)
    meta = next(x for x in z.namelist() if x.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                yield r
need = [n for n in ("llmcompressor", "compressed-tensors") if n in whl]
if len(need) < 2:
    sys.exit("llmcompressor or compressed-tensors wheel missing in .whl/ (sh bench/peer-wheels.sh)")
todo = list(need)
while todo:
    for r in requires(whl[todo.pop()]):
        n, v = canon(r.name), have(r.name)
        ok = v is not None and r.specifier.contains(v, prereleases=True)
        if n in whl:
            if not ok and n not in need:
                need.append(n)
                todo.append(n)
            print(f"  {r}: python3 has {v}; {'ships ' + os.path.basename(whl[n]) if n in need else 'kept'}",
                  file=sys.stderr)
        else:
            print(f"  {r}: python3 has {v}; not shipped{'' if ok else ' (NOT satisfied)'}", file=sys.stderr)
print("\n".join(whl[n] for n in need))
EOF
    then
        cat "$LOGS/wheels.log"
        say "deps: choosing wheels failed"
        return 1
    fi
    sort -u "$LOGS/wheels.log" | tee -a "$SUMMARY"
    # shellcheck disable=SC2046
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        $(cat "$LOGS/wheels.txt") > "$LOGS/pip.log" 2>&1 || { cat "$LOGS/pip.log"; say "deps: pip install failed"; return 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    say "deps: installed into /tmp/site: $(sed 's|.*/||; s|-py3.*||; s|-cp3.*||' "$LOGS/wheels.txt" | tr '\n' ' ')"
    if ! python3 bench/peer_llmcompressor.py --check > "$LOGS/check.txt" 2> "$LOGS/check.log"; then
        tail -n 30 "$LOGS/check.log"
        say "deps: import check failed"
        return 1
    fi
    say "deps: $(cat "$LOGS/check.txt")"
}

BUILD_PID=
DEPS_FAILED=
build_start() {
    # shellcheck disable=SC2086
    make -j16 $MAKEVARS all > "$LOGS/build.log" 2>&1 &
    BUILD_PID=$!
}
build_wait() {
    [ -n "$BUILD_PID" ] || build_start
    wait "$BUILD_PID"
    _rc=$?
    BUILD_PID=
    if [ $_rc -ne 0 ] || [ ! -x $GQ ]; then
        tail -n 40 "$LOGS/build.log"
        say "build: failed (rc $_rc)"
        return 1
    fi
    say "build: $($GQ --version) [$MAKEVARS] at $(elapsed) s"
}

step_synth() {
    if [ -f "$SYNTH/tokenizer.json" ]; then
        say "synth: $SYNTH is there"
    else
        _t=$(now)
        python3 bench/make_synth_model.py --shape 7b --tokenizer tests/data/pycoder-5m "$SYNTH" > "$LOGS/synth.log" 2>&1 ||
            { tail -n 20 "$LOGS/synth.log"; say "synth: failed"; return 1; }
        say "synth: $(tail -n 1 "$LOGS/synth.log") in $(awk "BEGIN{printf \"%.1f\", $(now) - $_t}") s"
    fi
    sync
}

step_gq() {
    if [ -n "$BUILD_PID" ] || [ ! -x $GQ ]; then build_wait || return 1; fi
    rm -f "$LOGS/gq.log" "$LOGS/gq-wall.json"
    _t=$(now)
    # shellcheck disable=SC2086
    timeout 300 $GQ quantize --model "$SYNTH" --out "$GQ_OUT" --calib $CALIB --device $GQ_DEVICE \
        --force ${GQ_ARGS:-} > "$LOGS/gq.log" 2>&1
    _rc=$?
    _w=$(awk "BEGIN{printf \"%.2f\", $(now) - $_t}")
    echo "{\"rc\": $_rc, \"wall_s\": $_w}" > "$LOGS/gq-wall.json"
    say "gq: rc $_rc, wall $_w s: $(grep -h 'done in' "$LOGS/gq.log" | sed 's/.*done in/done in/')"
}

step_peer() {
    [ -z "$DEPS_FAILED" ] || { say "peer: not run (the deps step failed)"; return 1; }
    _left=$((PEER_DEADLINE - $(elapsed)))
    [ $_left -gt 30 ] || { say "peer: only $_left s left before PEER_DEADLINE=$PEER_DEADLINE; not started"; return 1; }
    rm -f "$LOGS/peer-progress.jsonl" "$LOGS/peer-result.jsonl" "$LOGS/peer-wall.json" "$LOGS/peer.log"
    _t=$(now)
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 timeout $_left python3 bench/peer_llmcompressor.py --model "$SYNTH" \
        --out "$PEER_OUT" --force --calib $CALIB \
        --json "$LOGS/peer-result.jsonl" --progress "$LOGS/peer-progress.jsonl" ${PEER_ARGS:-} > "$LOGS/peer.log" 2>&1
    _rc=$?
    _w=$(awk "BEGIN{printf \"%.2f\", $(now) - $_t}")
    echo "{\"rc\": $_rc, \"wall_s\": $_w, \"limit_s\": $_left}" > "$LOGS/peer-wall.json"
    say "peer: rc $_rc$([ $_rc -eq 124 ] && echo " (stopped at the $_left s left)"), wall $_w s"
    grep -h '^\[peer' "$LOGS/peer.log" | grep -v subgraph | tail -n 8 | tee -a "$SUMMARY"
}

# peer.json: both runs side by side (python3: the machine has it; no jq needed)
report() {
    python3 - "$LOGS" "$OUT/peer.json" "$SYNTH" "$GQ_OUT" <<'EOF' | tee -a "$SUMMARY"
import json, os, re, subprocess, sys
logs, dst, model, gq_out = sys.argv[1:5]
def load(p, many=False):
    p = os.path.join(logs, p)
    if not os.path.exists(p):
        return None
    lines = [json.loads(l) for l in open(p) if l.strip()]
    return lines if many else (lines[-1] if lines else None)
try:
    dev = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except OSError:
    dev = "?"
res = {"device": dev, "model": model + (" (bench/make_synth_model.py --shape 7b: Llama-2-7B shape, random fp16, "
       "32 layers)" if model.endswith("synth-7b") else ""), "calib": "calib/python-sitepackages.jsonl, concat windows"}
gq = {"tool": "gq"}
gw = load("gq-wall.json")
if gw:
    gq.update(rc=gw["rc"], wall_s=gw["wall_s"])
    log = open(os.path.join(logs, "gq.log"), errors="replace").read()
    m = re.search(r"gq (\S+) \(git ([^,]+)", subprocess.run(["./build/gq", "--version"], capture_output=True,
                                                             text=True).stdout)
    if m:
        gq.update(version=m.group(1), commit=m.group(2))
    m = re.search(r"done in ([\d.]+) s \(load ([\d.]+), forward ([\d.]+), hessian ([\d.]+), solve ([\d.]+), "
                  r"export ([\d.]+)\); peak host memory ([^,]+), peak device memory ([^;]+);", log)
    if m:
        t = [float(x) for x in m.groups()[:6]]
        gq.update(total_s=t[0], load_s=t[1], forward_s=t[2], hessian_s=t[3], solve_s=t[4], export_s=t[5],
                  quant_s=round(t[2] + t[3] + t[4], 2), e2e_s=t[0], peak_host=m.group(7), peak_gpu=m.group(8))
    rep = os.path.join(gq_out, "gq_report.json")
    if os.path.exists(rep):
        s = json.load(open(rep)).get("settings", {})
        gq["settings"] = {k: s[k] for k in ("bits", "group_size", "sym", "act_order", "static_groups", "clip", "damp",
                                            "nsamples", "seqlen", "windowing", "precision") if k in s}
res["gq"] = gq
peer = {"tool": "llm-compressor"}
pw = load("peer-wall.json")
if pw:
    peer.update(rc=pw["rc"], wall_s=pw["wall_s"], limit_s=pw["limit_s"])
    r = load("peer-result.jsonl")
    if r:
        peer.update(r)
    prog = load("peer-progress.jsonl", many=True) or []
    if prog and not r:  # stopped before the end: how far it got
        last = prog[-1]
        peer.update(complete=False, subgraphs_done=last["subgraph"], subgraphs=last["of"],
                    oneshot_s_at_last_subgraph=last["t"])
        if len(prog) >= 3:  # subgraph 1 is the embedding alone; the rest are one decoder layer each
            per = (last["t"] - prog[0]["t"]) / (len(prog) - 1)
            peer["oneshot_s_extrapolated"] = round(prog[0]["t"] + per * (last["of"] - 1), 1)
        peer["note"] = ("stopped by the time limit; oneshot_s_extrapolated (if there) assumes every remaining "
                        "layer takes the mean time of those finished, and leaves out the save")
    elif r:
        peer["complete"] = True
    if prog:
        peer["subgraph_t"] = [p["t"] for p in prog]
res["peer"] = peer
if "quant_s" in gq and "quant_s" in peer and peer.get("complete"):
    res["ratio_quant"] = round(peer["quant_s"] / gq["quant_s"], 2)
    res["ratio_e2e"] = round(peer["e2e_s"] / gq["e2e_s"], 2)
json.dump(res, open(dst, "w"), indent=1)
row = lambda name, d, k: f"{d.get(k, '-')!s:>10}" if d else "-"
print(f"==== {dev}")
print(f"{'':34}{'gq':>10}{'llm-compressor':>16}")
for k, label in (("quant_s", "quantization itself (s)"), ("e2e_s", "model load to saved checkpoint (s)"),
                 ("wall_s", "process wall clock (s)")):
    print(f"{label:34}{gq.get(k, '-')!s:>10}{peer.get(k, '-')!s:>16}")
pg = peer.get("peak_gpu_alloc_gib")
print(f"{'peak GPU memory':34}{gq.get('peak_gpu', '-')!s:>10}{'-' if pg is None else f'{pg} GiB':>16}")
if "ratio_quant" in res:
    print(f"llm-compressor / gq: quantization {res['ratio_quant']}x, load to saved {res['ratio_e2e']}x")
elif peer.get("complete") is False:
    print(f"llm-compressor stopped after {peer['subgraphs_done']} of {peer['subgraphs']} subgraphs "
          f"({peer['oneshot_s_at_last_subgraph']} s into oneshot"
          + (f"; all of them at that pace: about {peer['oneshot_s_extrapolated']} s)"
             if "oneshot_s_extrapolated" in peer else ")"))
print(f"written {dst}")
EOF
}

finish() {
    report
    cp "$SUMMARY" "$OUT/peer.txt"
    cp "$OUT/peer.json" "$LOGS/" 2>/dev/null # (bench/gpu.sh speed reads it there)
    tar czf "$OUT/peer-logs.tar.gz" "$LOGS" 2>/dev/null
}

[ $# -eq 0 ] && set -- build deps synth gq peer
say "==== bench/peer.sh $* ($(date -u +%FT%TZ))"
for s in "$@"; do
    case $s in
    build) build_start ;;  # in the background; gq waits for it
    deps | synth | gq | peer)
        "step_$s" || { [ "$s" = deps ] && DEPS_FAILED=1; }
        ;;
    *) say "unknown step $s"; exit 2 ;;
    esac
    cp "$SUMMARY" "$OUT/peer.txt" # what a timed-out call still brings back
done
[ -z "$BUILD_PID" ] || build_wait
finish
