#!/bin/sh
# bench/decode_table.sh -- decode and prefill throughput and memory of the gq_gen engine, fp16 vs
# int4 (W4A16 kernel), on synthetic Llama-2-7B and CodeLlama-34B checkpoints, batch 1 / 8 / 64,
# prompt 2048 / 1024 new tokens (issue 16, part 2). On the GPU machine, from the repository root:
#
#   sh bench/decode_table.sh [STEP ...]       steps: plan build make run table
#                                             (default: plan make run table; DRY=1: plan only)
#   sh bench/decode_table.sh table FILE ...   the table and the goals from rows saved by earlier
#                                             calls ($OUT/rows.jsonl of each); runs anywhere
#
# Settings (environment):
#   SHAPES="7b 34b" DTYPES="fp16 int4" BATCHES="1 8 64"   the rows: every combination, or
#   ROWS="7b:fp16:1 34b:int4:64 ..."                      exactly these (shape:dtype:batch)
#   INT4_KERNEL="on"      "on off": also the int4 checkpoint dequantized to fp16 at load (dtype int4off)
#   PROMPT=2048 NEW=1024 REPS=1 CHUNK=2048 CHECK=64       bench_generate's --prompt --new --reps
#                                                         --chunk --check
#   PREFILL=auto          bench_generate --prefill: chunked (gq_gen_prefill), decode (the prompts go in
#                         by batched decode steps), auto (chunked, decode steps where it fails)
#   INT4_PREFILL=         decode: int4 rows use --prefill decode and are estimated so (while the
#                         engine's chunked prefill fails on int4-resident weights: graph.c's wrows()
#                         cannot take q/k/v rows of a packed weight); their prefill tok/s is then not
#                         the prefill goal's
#   BUDGET_S=560          seconds this call may take: a row that would not finish in what is left is
#                         not started (the plan prints the ROWS= lines that split the work)
#   ROW_MAX_S=240         a row estimated longer runs fewer decode steps (said in the output)
#   GPU_GB                card memory when nvidia-smi is missing (80); FIT=0.92 of it may be planned
#   FP16_34B_LAYERS=16    layers of the 34B fp16 checkpoint actually written (48 layers = 68 GB do
#                         not fit the machine's 64 GB disk); the table extrapolates to 48
#   MODELS=bench-models OUT=decode-out GQBUILD=build DEVICE=cuda
#   BW_TBS=3.0 TFLOPS=650 ATT_TFLOPS=76 ATT_US=10          constants of the time estimates: HBM
#                         bandwidth, fp16 GEMM and prefill-attention rates, and one warp's time in
#                         decode.cu's attention for 32 cached keys (its PTX: per-lane 2-byte loads of
#                         a key row and a 128-long FMA chain, then the 32 value rows two at a time,
#                         about 16 dependent trips to memory; with 4 warps a block and one block per
#                         head and sequence, batch 1 has too few warps in flight to hide them)
#
# Rows that do not fit the card at full depth (7B at batch 64: 64 x 3073 tokens of KV cache are
# 103 GB) and the 34B fp16 model run on "layer views" of the checkpoint (the same shards, a
# config.json with fewer num_hidden_layers; symlinks, no disk) at two depths L/2 and L; every
# per-layer cost of the engine is the same for every layer, so the table extrapolates time per
# token, prefill time and memory linearly to the full depth and marks those rows "(from L1, L2)".
#
# Files: $OUT/rows.jsonl (bench_generate --json, one object per run), $OUT/smi.jsonl (nvidia-smi's
# peak memory.used per run, CUDA context included), $OUT/decode.md (the table), $OUT/decode.json
# (meta, rows, goals), $OUT/decode-logs.tar.gz (every log).
set -u
OUT=${OUT:-decode-out}
mkdir -p "$OUT"
exec python3 - "$OUT" "$@" <<'PY'
import json, math, os, re, shutil, subprocess, sys, tarfile, threading, time

OUT = sys.argv[1]
ARGS = sys.argv[2:]
T0 = time.time()
env = os.environ.get


def envf(k, d):
    return float(env(k, d))


# ---- shapes and the cost model -------------------------------------------------------------------

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab (bench/make_synth_model.py)
    "7b": (4096, 11008, 32, 32, 32, 32000),
    "34b": (8192, 22016, 48, 64, 8, 32000),
    "70b": (8192, 28672, 80, 64, 8, 32000),
    "tiny": (256, 768, 2, 4, 2, 8192),
}
BW = envf("BW_TBS", 3.0) * 1e12      # device memory bandwidth, bytes/s (H100 SXM: 3.35 peak)
TF = envf("TFLOPS", 650) * 1e12      # fp16 GEMM rate (docs/performance.md: 650-670 measured)
ATT_TF = envf("ATT_TFLOPS", 76) * 1e12  # tensor-core attention (docs/performance.md)
ATT_US = envf("ATT_US", 10) * 1e-6   # decode.cu: one warp's time for a chunk of 32 cached keys (see below)
SMS, BLOCKS_PER_SM = 132, 16
MAKE_GBS = envf("MAKE_GBS", 1.0) * 1e9  # checkpoint writing (disk)
LOAD_GBS = envf("LOAD_GBS", 2.0) * 1e9  # page cache -> device


def params_layer(shape):
    h, I, nl, nh, nkv, V = SHAPES[shape]
    hd = h // nh
    return h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * I


def layer_bytes(shape, dt):
    """Device bytes of one layer: fp16 2 B/weight; int4 as w4a16.cu keeps it: 0.5 B codes + a
    half2 (scale, zero) per row and group of 128 inputs = 1/32 B per weight."""
    h = SHAPES[shape][0]
    p = params_layer(shape)
    return (2 * p if dt in ("fp16", "int4off") else p * (0.5 + 1 / 32)) + 2 * 2 * h


def disk_bytes(shape, dt, layers):
    h, I, nl, nh, nkv, V = SHAPES[shape]
    p = params_layer(shape)
    per = 2 * p if dt == "fp16" else p * (0.5 + 2 / 128 + 0.5 / 128) + 4 * h  # + scales, zeros, g_idx
    return layers * (per + 4 * h) + 2 * V * h * 2 + 2 * h


def mem_bytes(shape, dt, B, P, N, layers, chunk):
    """Device memory a bench_generate row allocates (gq_be_peak_bytes; the CUDA context not included)."""
    h, I, nl, nh, nkv, V = SHAPES[shape]
    hd = h // nh
    L = P + N + 1
    kv = B * layers * L * nkv * hd * 2 * 2
    R = max(min(chunk, L), B)
    scratch = R * (h + (nh + 2 * nkv) * hd + nh * hd + 2 * I + I + h + h) * 2
    q4 = 2 * max(2 * I * h, (nh + 2 * nkv) * hd * h, h * I) if dt == "int4" else 0
    nll_rows = min(max((64 << 20) // (V * 4), 16), 4096, B)
    nll = nll_rows * V * 4 + 2 * B * V * 4
    head = V * h * 2 + 2 * h
    return layers * layer_bytes(shape, dt) + head + kv + scratch + q4 + nll + (160 << 20)


def est_time(shape, dt, B, P, N, layers, chunk, reps, present, phys=None, by_decode=False):
    """Seconds of one bench_generate row (first principles, H100), by part."""
    h, I, nl, nh, nkv, V = SHAPES[shape]
    hd = h // nh
    p = params_layer(shape) * layers
    W = layers * layer_bytes(shape, dt) + V * h * 2
    kv_tok = layers * nkv * hd * 2 * 2  # bytes of K+V per cached token
    int4 = dt == "int4"
    # prefill of one prompt: GEMMs, causal attention, int4: the weights dequantized per chunk
    # (w4a16.cu's prefill path: read 0.53 B, write 2 B per weight) and, while graph.c's prefill
    # takes q/k/v rows of an int4 weight (wrows) as the whole fused weight, q|k|v computed 3 times
    nch = math.ceil(P / chunk)
    qkv = layers * (nh + 2 * nkv) * hd * h
    t_gemm = 2 * (p + (2 * qkv if int4 else 0)) * P / TF
    t_att = 2 * P * P * nh * hd * layers / ATT_TF
    t_deq = nch * params_layer(shape) * layers * 2.53 / BW if int4 else 0
    t_prompt = t_gemm + t_att + t_deq + nch * layers * 60e-6
    # a decode step at mean context c: weights (int4 at B > 16: dequantized each step), the KV
    # cache, the decode attention kernel's latency (blocks of 4 warps, one per head and row),
    # host work (launches overlap; logits download, argmax, nll's cudaMalloc/cudaFree)
    c = P + (N + 1) / 2

    def step(B, c):
        w = W if not (int4 and B > 16) else p * 4.53 + V * h * 2 + 2 * p * B / TF * BW
        t_mem = (w + B * kv_tok * c) / BW
        waves = math.ceil(nh * B / (SMS * BLOCKS_PER_SM))
        t_lat = layers * math.ceil(c / 128) * ATT_US * waves
        launch = layers * 11 * 5e-6
        return max(t_mem + t_lat, launch) + 150e-6 + B * (20e-6 + V * 4 / 10e9)

    t_step = step(B, c)
    t_fill = P * step(B, P / 2) if by_decode else B * t_prompt  # the B prompts
    load = W / LOAD_GBS + (p * 0.4e-9 if int4 else 0) + 4.0
    warm = (0 if by_decode else t_prompt) + 4 * step(B, P)
    check = t_prompt * 64 / P + 64 * step(1, 32) if env("CHECK", "64") != "0" and not by_decode else 0
    run = reps * (t_fill + N * t_step)
    make = 0 if present else disk_bytes(shape, "fp16" if dt == "fp16" else "int4", phys or layers) / MAKE_GBS
    return {"make": make, "load": load, "warmup": warm, "prefill": reps * t_fill, "decode": reps * N * t_step,
            "check": check, "total": make + load + warm + run + check, "step_ms": 1e3 * t_step,
            "prompt_s": t_prompt, "t_step": t_step}


# ---- the machine ------------------------------------------------------------------------------------

def card():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        name, mib = [x.strip() for x in out.rsplit(",", 1)]
        return name, float(mib) * (1 << 20)
    except Exception:
        return "no nvidia-smi", envf("GPU_GB", 80) * 1e9


CARD, CARD_BYTES = card()
FIT = envf("FIT", 0.92)
MODELS = env("MODELS", "bench-models")
GQBUILD = env("GQBUILD", "build")
DEVICE = env("DEVICE", "cuda")
BENCH = os.path.join(GQBUILD, "bench", "bench_generate")
PROMPT, NEW, REPS = int(env("PROMPT", "2048")), int(env("NEW", "1024")), int(env("REPS", "1"))
# chunk: the 2048-token prompts go in whole (one prefill call per sequence and layer): the int4
# rows' dequantize-then-cuBLAS prefill pays its dequantization once per 2048 rows instead of four
# times (the 2026-12-07 table ran CHUNK=512: int4 prefill 0.72x fp16)
CHUNK, CHECK = int(env("CHUNK", "2048")), int(env("CHECK", "64"))
BUDGET, ROW_MAX = envf("BUDGET_S", 560), envf("ROW_MAX_S", 240)
PACK = envf("PACK_S", 330)  # the plan's calls: estimated seconds each (room for estimates 1.7x too low)
ADAPT = [1.0]  # measured / estimated seconds of the runs so far (the "not started" check uses the largest)
FP16_34B_LAYERS = int(env("FP16_34B_LAYERS", "16"))
LOGS = env("LOGS", "decode-logs")  # beside $OUT, which gets them as one tarball
os.makedirs(LOGS, exist_ok=True)


def say(*a):
    print(*a, flush=True)


def ckpt_dir(shape, dt):
    """The checkpoint a row reads (int4off reads the int4 one) and its physical layers."""
    base = "fp16" if dt == "fp16" else "int4"
    nl = SHAPES[shape][2]
    if shape == "34b" and base == "fp16" and FP16_34B_LAYERS < nl:
        return os.path.join(MODELS, f"dt-{shape}-{base}-L{FP16_34B_LAYERS}"), FP16_34B_LAYERS, base
    return os.path.join(MODELS, f"dt-{shape}-{base}"), nl, base


def present(d):
    return os.path.exists(os.path.join(d, "config.json")) and os.path.exists(os.path.join(d, "tokenizer.json"))


def rows_wanted():
    kern = env("INT4_KERNEL", "on").split()
    if env("ROWS"):
        rows = [tuple(r.split(":")) for r in env("ROWS").split()]
        return [(s, d, int(b)) for s, d, b in rows]
    rows = []
    for s in env("SHAPES", "7b 34b").split():
        for d in env("DTYPES", "fp16 int4").split():
            for dd in ([d] if d != "int4" else ["int4" if k == "on" else "int4off" for k in kern]):
                for b in env("BATCHES", "1 8 64").split():
                    rows.append((s, dd, int(b)))
    return rows


def prefill_mode(dt):
    return "decode" if dt == "int4" and env("INT4_PREFILL") == "decode" else env("PREFILL", "auto")


def plan_row(shape, dt, B):
    """Depths to run (full, or two layer views), decode steps, estimates."""
    d, phys, base = ckpt_dir(shape, dt)
    byd = prefill_mode(dt) == "decode"
    nl = SHAPES[shape][2]
    memdt = "fp16" if dt == "int4off" else dt
    fits = lambda L, N: mem_bytes(shape, memdt, B, PROMPT, N, L, CHUNK) <= FIT * CARD_BYTES
    N = NEW
    if phys == nl and fits(nl, N):
        depths = [nl]
    else:
        L2 = phys
        while L2 >= 2 and not fits(L2, N):
            L2 //= 2
        depths = [L2 // 2, L2] if L2 >= 2 else []
    p = present(d)
    est = [est_time(shape, memdt, B, PROMPT, N, L, CHUNK, REPS, p or i > 0, phys, byd) for i, L in enumerate(depths)]
    note = ""
    while depths and sum(e["total"] for e in est) > ROW_MAX and N > 64:
        N = max(64, N // 2)
        est = [est_time(shape, memdt, B, PROMPT, N, L, CHUNK, REPS, p or i > 0, phys, byd)
               for i, L in enumerate(depths)]
    if N != NEW:
        note = f"--new {N} (not {NEW}): {NEW} steps were estimated over {ROW_MAX:.0f} s"
    full_mem = mem_bytes(shape, memdt, B, PROMPT, NEW, nl, CHUNK)
    full_step = est_time(shape, memdt, B, PROMPT, N, nl, CHUNK, REPS, True)["step_ms"]
    return {"full_step_ms": full_step, "shape": shape, "dtype": dt, "batch": B, "dir": d, "phys": phys, "depths": depths, "new": N,
            "est": est, "est_total": sum(e["total"] for e in est), "mem_full": full_mem, "note": note}


def fmt_s(s):
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def step_plan(rows):
    say(f"== plan: {CARD}, {CARD_BYTES / 2**30:.1f} GiB (rows planned up to {FIT:.0%}); prompt {PROMPT}, new {NEW}, "
        f"reps {REPS}, chunk {CHUNK}; estimates at {BW / 1e12:.1f} TB/s, {TF / 1e12:.0f} TFLOP/s GEMMs, "
        f"{ATT_TF / 1e12:.0f} TFLOP/s prefill attention, {ATT_US * 1e6:.0f} us per 32 cached keys and warp in decode")
    say("| row | depth(s) run | memory at full depth | new | make | load | prefill | decode | ms/step at full depth "
        "| row total |")
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    plans = [plan_row(*r) for r in rows]
    for pl in plans:
        e = pl["est"]
        depths = "/".join(str(L) for L in pl["depths"]) or "does not fit"
        sm = lambda k: sum(x[k] for x in e)
        say(f"| {pl['shape']} {pl['dtype']} b{pl['batch']} | {depths} | {pl['mem_full'] / 2**30:.1f} GiB | {pl['new']} | "
            f"{fmt_s(sm('make'))} | {fmt_s(sm('load'))} | {fmt_s(sm('prefill'))} | {fmt_s(sm('decode'))} | "
            f"{pl['full_step_ms']:.2f} | {fmt_s(pl['est_total'])} |")
        if pl["note"]:
            say(f"  note: {pl['note']}")
    # calls of at most BUDGET_S, rows of one checkpoint together (it is made once per call)
    calls, cur, t, made = [], [], 0.0, set()
    for pl in sorted(plans, key=lambda p: (p["dir"], p["batch"])):
        mk = 0 if pl["dir"] in made else sum(x["make"] for x in pl["est"][:1])
        cost = pl["est_total"] - sum(x["make"] for x in pl["est"]) + mk
        if cur and t + cost > PACK:
            calls.append((cur, t))
            cur, t, made = [], 0.0, set()
            mk = sum(x["make"] for x in pl["est"][:1])
            cost = pl["est_total"] - sum(x["make"] for x in pl["est"]) + mk
        cur.append(pl)
        t += cost
        made.add(pl["dir"])
    if cur:
        calls.append((cur, t))
    total = sum(t for _, t in calls)
    say(f"estimated total {fmt_s(total)}; in calls of about {PACK:.0f} s estimated (PACK_S; each call stops "
        f"starting rows at BUDGET_S = {BUDGET:.0f} s; a fresh machine makes its checkpoints again and needs the "
        f"build first, `sh bench/gpu.sh build` or the step build, 1-3 min):")
    for cs, t in calls:
        ids = " ".join("%s:%s:%d" % (p["shape"], p["dtype"], p["batch"]) for p in cs)
        say(f"  ~{fmt_s(t)}: ROWS=\"{ids}\" sh bench/decode_table.sh")
    return plans


# ---- checkpoints --------------------------------------------------------------------------------------

def free_bytes(path):
    os.makedirs(path, exist_ok=True)
    return shutil.disk_usage(path).free


def make_ckpt(pl, keep):
    d, phys = pl["dir"], pl["phys"]
    if present(d):
        return True
    base = "fp16" if pl["dtype"] == "fp16" else "int4"
    need = disk_bytes(pl["shape"], base, phys) + (1 << 30)
    if free_bytes(MODELS) < need:  # remove this script's other checkpoints that this call does not need
        for x in sorted(os.listdir(MODELS)):
            p = os.path.join(MODELS, x)
            if x.startswith("dt-") and p not in keep and os.path.isdir(p) and not os.path.islink(p):
                say(f"  removing {p} for disk space")
                shutil.rmtree(p, ignore_errors=True)
    if free_bytes(MODELS) < need:
        say(f"  cannot make {d}: needs {need / 1e9:.1f} GB, {free_bytes(MODELS) / 1e9:.1f} GB free on {MODELS}")
        return False
    tok = "tests/data/pycoder-5m"
    cmd = ["python3", "bench/make_synth_model.py", "--shape", pl["shape"], "--layers", str(phys), "--tokenizer", tok]
    cmd += ["--int4"] if base == "int4" else []
    cmd += [d + ".partial"]
    shutil.rmtree(d + ".partial", ignore_errors=True)
    t = time.time()
    log = open(os.path.join(LOGS, f"make-{os.path.basename(d)}.log"), "w")
    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        say(f"  make {d}: rc {rc} (log {log.name})")
        return False
    os.replace(d + ".partial", d)
    say(f"  made {d} ({phys} layers, {base}) in {time.time() - t:.0f} s")
    return True


def view(d, layers):
    """d itself at its depth, else d.L<layers>: config.json with num_hidden_layers = layers,
    everything else symlinked (gq ignores the extra layers' tensors, with a warning)."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    if cfg["num_hidden_layers"] == layers:
        return d
    v = f"{d}.L{layers}"
    os.makedirs(v, exist_ok=True)
    for f in os.listdir(d):
        if f != "config.json" and not os.path.exists(os.path.join(v, f)):
            os.symlink(os.path.abspath(os.path.join(d, f)), os.path.join(v, f))
    cfg["num_hidden_layers"] = layers
    json.dump(cfg, open(os.path.join(v, "config.json"), "w"), indent=2)
    return v


# ---- running ------------------------------------------------------------------------------------------

class SmiPeak:
    """nvidia-smi memory.used (MiB) sampled every 100 ms while a run lasts."""

    def __init__(self):
        self.peak = self.base = None
        self.p = None
        try:
            q = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
            self.base = float(subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.split()[0])
            self.p = subprocess.Popen(q + ["-lms", "100"], stdout=subprocess.PIPE, text=True)
            self.t = threading.Thread(target=self._read, daemon=True)
            self.t.start()
        except Exception:
            self.p = None

    def _read(self):
        for line in self.p.stdout:
            try:
                v = float(line.split()[0])
                self.peak = v if self.peak is None else max(self.peak, v)
            except (ValueError, IndexError):
                pass

    def stop(self):
        if self.p:
            self.p.terminate()
            self.p.wait()
        return self.base, self.peak


def run_row(pl):
    shape, dt, B = pl["shape"], pl["dtype"], pl["batch"]
    for L, e in zip(pl["depths"], pl["est"]):
        left = BUDGET - (time.time() - T0)
        need = (e["total"] - e["make"]) * max(ADAPT)
        if need > left:
            say(f"  not started: {shape} {dt} batch {B} at {L} layers: ~{fmt_s(need)}, {fmt_s(left)} left; "
                f"run ROWS=\"{shape}:{dt}:{B}\" in another call")
            return
        m = view(pl["dir"], L)
        label = f"{shape}-{dt}" + ("" if L == SHAPES[shape][2] else f"@L{L}")
        cmd = [BENCH, "--device", DEVICE, "--models", m, "--labels", label, "--batches", str(B), "--prompt",
               str(PROMPT), "--new", str(pl["new"]), "--reps", str(REPS), "--chunk", str(CHUNK), "--warmup", "short",
               "--check", str(CHECK), "--prefill", prefill_mode(dt),
               "--int4-kernel", "off" if dt == "int4off" else "on", "--json",
               os.path.join(OUT, "rows.jsonl")]
        lim = min(max(60.0, 3 * (e["total"] - e["make"]) + 30), left + 20)  # past BUDGET_S by 20 s at most
        say(f"  run {label} batch {B} (est. {fmt_s(e['total'] - e['make'])}, limit {fmt_s(lim)}): {' '.join(cmd)}")
        smi = SmiPeak()
        t = time.time()
        log = os.path.join(LOGS, f"{label}-b{B}.log")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=lim)
            rc, so, se = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as x:
            rc, so, se = 124, (x.stdout or b"").decode() if isinstance(x.stdout, bytes) else (x.stdout or ""), \
                (x.stderr or b"").decode() if isinstance(x.stderr, bytes) else (x.stderr or "")
        base, peak = smi.stop()
        if rc == 0:
            ADAPT.append(min(4.0, max(0.5, (time.time() - t) / max(1.0, e["total"] - e["make"]))))
        open(log, "w").write(so + "\n---- stderr\n" + se)
        for line in so.splitlines():
            if line.startswith(("| " + label, "check ", "note ", "replayed ", "copy bandwidth")):
                say("    " + line)
        say(f"    rc {rc}, {time.time() - t:.0f} s" + (f"; nvidia-smi peak {peak - base:.0f} MiB over {base:.0f}"
                                                    if peak is not None else ""))
        if rc:
            say("    " + "\n    ".join(se.strip().splitlines()[-5:]))
        with open(os.path.join(OUT, "smi.jsonl"), "a") as f:
            f.write(json.dumps({"label": label, "batch": B, "rc": rc, "wall_s": round(time.time() - t, 1),
                                "smi_base_mib": base, "smi_peak_mib": peak, "note": pl["note"]}) + "\n")


# ---- the table --------------------------------------------------------------------------------------

def load_rows(files):
    rows, smi = [], {}
    for f in files:
        if not os.path.exists(f):
            continue
        for line in open(f):
            if line.strip():
                rows.append(json.loads(line))
        s = os.path.join(os.path.dirname(f), "smi.jsonl")
        if os.path.exists(s):
            for line in open(s):
                if line.strip():
                    o = json.loads(line)
                    smi[(o["label"], o["batch"])] = o
    for r in rows:
        o = smi.get((r["label"], r["batch"]))
        if o and o.get("smi_peak_mib") is not None:
            r["smi_bytes"] = (o["smi_peak_mib"] - o["smi_base_mib"]) * (1 << 20)
        if o and o.get("note"):
            r["note"] = o["note"]
    return rows


LIN = ("prefill_s_prompt", "decode_ms_step", "step_ms_start", "step_ms_end", "peak_bytes", "bytes_step", "smi_bytes",
       "floor_ms_step")


def combine(rows):
    """One entry per (shape, dtype, batch): the full-depth run, else the extrapolation of two depths."""
    by = {}
    for r in rows:
        m = re.match(r"^(\w+)-(fp16|int4off|int4)(?:@L(\d+))?$", r["label"])
        if not m:
            continue
        shape, dt = m.group(1), m.group(2)
        r["prefill_s_prompt"] = r["prefill_s"] / r["batch"]
        key = (shape, dt, r["batch"], r["chunk"], r["prompt"])
        by.setdefault(key, {})[r["layers"]] = r  # the last run of a depth wins
    out = []
    for (shape, dt, B, _, _), d in sorted(by.items(), key=lambda x: x[0]):
        nl = SHAPES[shape][2] if shape in SHAPES else max(d)
        if nl in d:
            e = dict(d[nl])
            e["from_layers"] = None
        elif len(d) >= 2:
            L1, L2 = sorted(d)[-2:]
            a, b = d[L1], d[L2]
            e = dict(b)
            f = (nl - L2) / (L2 - L1)
            for k in LIN:
                if k in a and k in b:
                    e[k] = b[k] + f * (b[k] - a[k])
            e["layers"], e["from_layers"] = nl, [L1, L2]
            e["prefill_tok_s"] = e["prompt"] / e["prefill_s_prompt"]
            e["decode_tok_s"] = B * 1e3 / e["decode_ms_step"]
            e["x_floor"] = e["decode_ms_step"] / e["floor_ms_step"] if e.get("floor_ms_step") else 0
        else:
            continue
        e["shape"], e["dtype"] = shape, dt
        out.append(e)
    return out


def gib(x):
    return f"{x / 2**30:.2f}" if x else "-"


def step_table(files):
    rows = load_rows(files)
    if not rows:
        say("table: no rows in " + ", ".join(files))
        return
    ent = combine(rows)
    bw = max((r.get("copy_bytes_s", 0) for r in rows), default=0)
    lines = [f"Device: {rows[0]['backend']}; measured copy bandwidth {bw / 1e9:.0f} GB/s (read + write); "
             f"prompt {rows[0]['prompt']} tokens, prefill chunk {rows[0]['chunk']}, greedy, logits to the host.", "",
             "| shape | weights | batch | prefill tok/s | decode tok/s | ms/step | ms/step at start / end | peak GiB (gq) "
             "| peak GiB (nvidia-smi) | GB read/step | floor ms/step | x floor | new | chunk | check |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in ent:
        src = f" (from {e['from_layers'][0]}, {e['from_layers'][1]} layers)" if e["from_layers"] else ""
        chk = "-" if e.get("check_max_diff") is None else (
            f"{e['check_max_diff'] / max(e['check_max_logit'], 1e-30):.1g} rel" +
            ("" if e.get("check_top1_same") else ", top-1 differs"))
        if e.get("check_max_diff", 0) < 0:
            chk = "NaN"
        pf = " (by decode steps)" if e.get("prefill_mode", "chunked") != "chunked" else ""
        if e.get("prefill_failed"):
            chk = "prefill failed"
        lines.append(f"| {e['shape']}{src} | {e['dtype'] if e['dtype'] != 'int4off' else 'int4 as fp16'} | {e['batch']} | "
                     f"{e['prefill_tok_s']:.0f}{pf} | {e['decode_tok_s']:.1f} | {e['decode_ms_step']:.2f} | "
                     f"{e['step_ms_start']:.2f} / {e['step_ms_end']:.2f} | {gib(e['peak_bytes'])} | "
                     f"{gib(e.get('smi_bytes'))} | {e['bytes_step'] / 1e9:.2f} | {e['floor_ms_step']:.2f} | "
                     f"{e['x_floor']:.2f} | {e['new']} | {e['chunk']} | {chk} |")
        if e.get("note"):
            lines.append(f"|  | note: {e['note']} | | | | | | | | | | | | | |")
    goals = []
    E = {}
    for e in ent:  # per (shape, dtype, batch): the run with the default chunk, else any
        k = (e["shape"], e["dtype"], e["batch"])
        if k not in E or e["chunk"] == 512:
            E[k] = e

    def goal(name, ok, text):
        goals.append({"goal": name, "pass": ok, "text": text})
        lines.append(f"- {'PASS' if ok else 'FAIL' if ok is not None else 'n/a'}: {name}: {text}")

    lines += ["", "Goals (issue 16):"]
    for s in sorted({e["shape"] for e in ent}):
        f, q = E.get((s, "fp16", 1)), E.get((s, "int4", 1))
        if f and q:
            r = q["decode_tok_s"] / f["decode_tok_s"]
            goal(f"{s} batch-1 decode int4 >= 2.5x fp16", r >= 2.5,
                 f"{q['decode_tok_s']:.1f} / {f['decode_tok_s']:.1f} tok/s = {r:.2f}x")
        if q:
            goal(f"{s} batch-1 int4 decode within 1.5x of the bandwidth floor", q["x_floor"] <= 1.5,
                 f"{q['decode_ms_step']:.2f} ms/token vs {q['bytes_step'] / 1e9:.2f} GB / {bw / 1e9:.0f} GB/s = "
                 f"{q['floor_ms_step']:.2f} ms: {q['x_floor']:.2f}x (ms/step at start {q['step_ms_start']:.2f}, "
                 f"end {q['step_ms_end']:.2f})")
        f64, q64 = E.get((s, "fp16", 64)), E.get((s, "int4", 64))
        if f64 and q64 and "chunked" not in (f64.get("prefill_mode", "chunked"), q64.get("prefill_mode", "chunked")):
            goal(f"{s} prefill int4 within 1.3x of fp16 at batch 64", None, "not measured: " +
                 (q64.get("prefill_failed") or f64.get("prefill_failed") or "prompts went in by decode steps"))
        elif f64 and q64 and q64.get("prefill_mode", "chunked") != "chunked":
            goal(f"{s} prefill int4 within 1.3x of fp16 at batch 64", None, "not measured: int4 " +
                 (q64.get("prefill_failed") or "prompts went in by decode steps"))
        elif f64 and q64:
            r = f64["prefill_tok_s"] / q64["prefill_tok_s"]
            goal(f"{s} prefill int4 within 1.3x of fp16 at batch 64", r <= 1.3,
                 f"{q64['prefill_tok_s']:.0f} vs {f64['prefill_tok_s']:.0f} tok/s: fp16 {r:.2f}x faster")
    q = E.get(("34b", "int4", 1))
    if q:
        smi = q.get("smi_bytes")
        ok = q["peak_bytes"] < 24e9 and (smi is None or smi < 24e9)
        goal("34b int4, weights + 2048+1024-token KV cache, under 24 GB", ok,
             f"gq allocations {q['peak_bytes'] / 1e9:.2f} GB ({gib(q['peak_bytes'])} GiB)" +
             (f", nvidia-smi {smi / 1e9:.2f} GB with the CUDA context" if smi else "") +
             f" (max_len {q['prompt'] + q['new'] + 1} tokens)")
    text = "\n".join(lines)
    say(text)
    open(os.path.join(OUT, "decode.md"), "w").write(text + "\n")
    meta = {"card": CARD, "date": time.strftime("%Y-%m-%d"), "copy_bytes_s": bw, "command":
            "sh bench/decode_table.sh " + " ".join(ARGS), "env": {k: v for k, v in os.environ.items() if k in (
                "SHAPES", "DTYPES", "BATCHES", "ROWS", "INT4_KERNEL", "PROMPT", "NEW", "REPS", "CHUNK", "CHECK")}}
    json.dump({"meta": meta, "rows": ent, "runs": rows, "goals": goals}, open(os.path.join(OUT, "decode.json"), "w"),
              indent=1)


# ---- main ---------------------------------------------------------------------------------------------

def step_build():
    if os.path.exists(BENCH):
        return
    mk = "CUDA=1" if DEVICE != "cpu" else "CUDA=0"
    if not all(os.path.exists(p) for p in ("/usr/include/jansson.h", "/usr/include/pcre2.h", "/usr/include/lapacke.h")):
        if os.path.exists(".gqdeps.tar.xz"):
            if not os.path.isdir(".gqdeps"):
                os.makedirs(".gqdeps")
                subprocess.run(["tar", "xJf", ".gqdeps.tar.xz", "-C", ".gqdeps"])
            mk += " DEPS=.gqdeps/usr"
    say(f"== build: make -j16 {mk} BUILD={GQBUILD} {BENCH}")
    r = subprocess.run(["make", "-j16", *mk.split(), f"BUILD={GQBUILD}", BENCH], capture_output=True, text=True)
    open(os.path.join(LOGS, "build.log"), "w").write(r.stdout + r.stderr)
    if r.returncode:
        say(r.stdout[-3000:] + r.stderr[-3000:])
        sys.exit(1)


def main():
    if ARGS and ARGS[0] == "table" and len(ARGS) > 1:
        step_table(ARGS[1:])
        return
    steps = ARGS or (["plan"] if env("DRY") == "1" else ["plan", "make", "run", "table"])
    rows = rows_wanted()
    plans = None
    for st in steps:
        if st == "plan":
            plans = step_plan(rows)
        elif st == "build":
            step_build()
        elif st == "make":
            plans = plans or [plan_row(*r) for r in rows]
            keep = {p["dir"] for p in plans}
            say("== make")
            for d in sorted(keep):
                pl = next(p for p in plans if p["dir"] == d)
                make_ckpt(pl, keep)
        elif st == "run":
            plans = plans or [plan_row(*r) for r in rows]
            if not os.path.exists(BENCH):
                step_build()
            say(f"== run ({fmt_s(time.time() - T0)} so far)")
            for pl in plans:
                if not pl["depths"]:
                    say(f"  {pl['shape']} {pl['dtype']} batch {pl['batch']}: does not fit {CARD} at any depth")
                elif not present(pl["dir"]):
                    say(f"  {pl['shape']} {pl['dtype']} batch {pl['batch']}: no checkpoint {pl['dir']} (step make)")
                else:
                    run_row(pl)
        elif st == "table":
            step_table([os.path.join(OUT, "rows.jsonl")] + env("MORE_ROWS", "").split())
        else:
            say(f"unknown step {st}: plan build make run table")
            sys.exit(2)
    with tarfile.open(os.path.join(OUT, "decode-logs.tar.gz"), "w:gz") as t:
        t.add(LOGS, arcname="decode-logs")
    say(f"== done in {fmt_s(time.time() - T0)}")


main()
PY
