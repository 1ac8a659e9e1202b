#!/usr/bin/env python3
"""The peer, side by side with gq: llm-compressor's GPTQModifier on the same
checkpoint and the same calibration tokens, timed (issue 14; docs/peer.md).

    python3 bench/peer_llmcompressor.py --model DIR --out DIR [--calib FILE]
        [--nsamples 128] [--seqlen 2048] [--actorder static|none] [--observer mse|minmax]
        [--model-device cpu|cuda] [--offload-device cpu|cuda] [--json FILE] [--progress FILE]
    python3 bench/peer_llmcompressor.py --check     (imports, versions)

Profile: gq's default profile (src/quant/pipeline.c, gq_quant_opts_default) in
llm-compressor's terms: W4A16 (int4 weights, group 128, symmetric), every Linear
but lm_head, dampening 0.01, blocks of 128 columns; actorder "static" (columns in
order of decreasing Hessian diagonal, group scales fixed before the solve: gq's
--act-order --static-groups; also llm-compressor's own default) and the weight
observer memoryless_mse set to gq's --clip mse search (grid 100, maxshrink 0.8,
norm 2.4, whole grid). --actorder none / --observer minmax give gq's
--no-act-order / --clip minmax (minmax is the W4A16 preset's own observer).

Calibration: built exactly as gq builds its concat windows (src/quant/calib.c,
--calib-seed 0): for each record of the JSONL file in file order, BOS + the
text's tokens (no special tokens) + EOS appended to one stream, cut into
consecutive --seqlen windows, the first --nsamples kept. The tokens come from the
model's tokenizer through transformers' AutoTokenizer (gq's tokenizer is token
for token Hugging Face's; docs/testing.md). They go to oneshot pre-tokenized, as
a torch DataLoader of {input_ids, attention_mask} batches of one window, so no
text is tokenized or truncated inside llm-compressor.

The model is loaded as llm-compressor documents for its (default) sequential
pipeline: fp16 on the CPU (`--model-device cpu`), each decoder layer onloaded to
the GPU in turn, activations kept on the CPU between layers
(`--offload-device cpu`).

Times (wall clock, seconds): calib_s (tokenize + windows), load_s
(from_pretrained), quant_s (oneshot: trace, calibration forwards, Hessians,
GPTQ solves), save_s (save_pretrained, compressed-tensors pack-quantized, plus
the tokenizer), e2e_s = calib_s + load_s + quant_s + save_s (model load to
saved checkpoint, contiguous), import_s (python imports). One JSON line goes to
stdout and is appended to --json; --progress gets a line per finished layer
(so a run stopped by a time limit still says how far it got).

llm-compressor imports `datasets` at module level (for type hints and for
loading named data sets) but this script never uses it: where `datasets` is not
installed a small stand-in module is registered in its place (see
_datasets_stand_in), which saves shipping datasets + pyarrow + pandas (68 MB).
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import time

T_PROC = time.time()
# gq --clip mse (docs/accuracy.md, "Fidelity"): p = 1, 0.99, ..., 0.21, keep the first minimum of sum |q(x) - x|^2.4;
# patience 80 = the whole grid (llm-compressor's default stops after 5 steps without improvement)
MSE_KWARGS = {"grid": 100.0, "maxshrink": 0.8, "norm": 2.4, "patience": 80}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[peer {time.time() - T_PROC:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _datasets_stand_in():
    """Import the real `datasets` if installed, else register a stand-in module.

    llm-compressor 0.14.0.1 imports Dataset, DatasetDict, IterableDataset,
    load_dataset and datasets.formatting.formatting.LazyRow at module level
    (llmcompressor/typing.py, args/dataset_arguments.py, datasets/utils.py,
    transformers/data/*.py) and uses them only for isinstance checks, type hints
    and loading data sets by name. A DataLoader passed as `dataset` bypasses all
    of that (datasets/utils.py: get_calibration_dataloader returns it as is), so
    empty classes serve. The stand-in has a module spec (importlib.util.find_spec
    works) but no distribution metadata, so transformers' and accelerate's
    is_datasets_available() still say False. Returns a description for the report.
    """
    try:
        import datasets  # noqa: F401

        return "datasets " + getattr(datasets, "__version__", "?")
    except ImportError:
        pass
    import importlib.machinery
    import types

    def module(name, pkg):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=pkg)
        if pkg:
            m.__path__ = []
        sys.modules[name] = m
        return m

    class Dataset:  # noqa: D401 - names as in datasets
        pass

    class IterableDataset:
        pass

    class DatasetDict(dict):
        pass

    class LazyRow(dict):
        pass

    def load_dataset(*a, **k):
        raise RuntimeError("datasets is not installed (peer_llmcompressor.py registered a stand-in); "
                           "pass a pre-tokenized DataLoader")

    ds = module("datasets", True)
    ds.Dataset, ds.IterableDataset, ds.DatasetDict, ds.load_dataset = Dataset, IterableDataset, DatasetDict, load_dataset
    ds.__version__ = "0+stand-in"
    fmt = module("datasets.formatting", True)
    fmt2 = module("datasets.formatting.formatting", False)
    fmt2.LazyRow = LazyRow
    ds.formatting, fmt.formatting = fmt, fmt2
    return "stand-in (datasets not installed)"


def import_llmcompressor():
    """Import llmcompressor with its console log (loguru, bound to sys.stdout when the package is
    imported) on stderr, so stdout carries only this script's result line."""
    out, sys.stdout = sys.stdout, sys.stderr
    try:
        import llmcompressor
        import llmcompressor.entrypoints.oneshot  # noqa: F401 - the entry point and the modifier, imported now
        import llmcompressor.modifiers.gptq  # noqa: F401
    finally:
        sys.stdout = out
    return llmcompressor


def read_records(path):
    """Yield (lineno, text) like gq_jsonl_next + parse_record: blank lines skipped,
    "text" wins, else question + answer concatenated. gzip or plain."""
    import gzip

    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    f = gzip.open(path, "rb") if gz else open(path, "rb")
    with f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip(b"\n").rstrip(b"\r")
            if not line.strip(b" \t\r"):
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except ValueError as e:
                sys.exit(f"{path}:{lineno}: not valid JSON: {e}")
            if not isinstance(rec, dict):
                sys.exit(f"{path}:{lineno}: expected a JSON object")
            if "text" in rec:
                if not isinstance(rec["text"], str):
                    sys.exit(f'{path}:{lineno}: "text" is not a string')
                yield lineno, rec["text"], "text"
            elif "question" in rec and "answer" in rec:
                yield lineno, rec["question"] + rec["answer"], "qa"
            else:
                sys.exit(f'{path}:{lineno}: expected {{"text": ...}} or {{"question": ..., "answer": ...}}')


def build_windows(tok, path, nsamples, seqlen):
    """gq's concat windows (src/quant/calib.c, GQ_WIN_CONCAT, seed 0) as a list of id lists."""
    total = nsamples * seqlen
    bos, eos = tok.bos_token_id, tok.eos_token_id
    stream, nrec = [], 0
    for lineno, text, kind in read_records(path):
        if len(stream) >= total:
            break
        if kind == "qa" and nrec == 0:
            sys.exit(f"{path}: question/answer records: gq windows these per record (sample), "
                     "which this script does not reproduce; use a {\"text\": ...} file")
        nrec += 1
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if bos is not None:
            stream.append(bos)
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    if len(stream) < total:
        sys.exit(f"{path}: too little calibration data: {nsamples} windows of {seqlen} tokens requested, "
                 f"but its {nrec} records give {len(stream)} tokens")
    return [stream[i * seqlen:(i + 1) * seqlen] for i in range(nsamples)], nrec, bos, eos


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="fp16 Hugging Face checkpoint directory (required)")
    ap.add_argument("--out", help="output directory (compressed-tensors); omit with --no-save")
    ap.add_argument("--no-save", action="store_true", help="quantize only, do not save")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    ap.add_argument("--calib", default=os.path.join(REPO, "calib", "python-sitepackages.jsonl"))
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--actorder", choices=["static", "none"], default="static",
                    help="static (act-order, groups fixed before the solve: gq's default --act-order "
                         "--static-groups, and llm-compressor's default) or none (gq --no-act-order)")
    ap.add_argument("--observer", choices=["mse", "minmax"], default="mse",
                    help="group scales: mse = memoryless_mse with gq's --clip mse search (grid 100, maxshrink "
                         "0.8, norm 2.4, no early stop; gq's default); minmax = the W4A16 preset's "
                         "memoryless_minmax (gq --clip minmax)")
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQModifier dampening_frac")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--model-device", default="cpu",
                    help="where from_pretrained puts the model: cpu (no device_map; llm-compressor's examples for "
                         "its sequential pipeline, which onloads one layer at a time) or cuda (device_map)")
    ap.add_argument("--offload-device", default="cpu", help="oneshot sequential_offload_device (cpu or cuda)")
    ap.add_argument("--json", help="append the result line to this file")
    ap.add_argument("--progress", help="append a line per finished layer to this file")
    ap.add_argument("--dump-ids", help="write the calibration windows as little-endian int32 to this file")
    ap.add_argument("--calib-only", action="store_true", help="build (and dump) the windows, then stop")
    ap.add_argument("--check", action="store_true", help="import everything, print the versions, stop")
    a = ap.parse_args()
    if a.check:
        note = _datasets_stand_in()
        llmcompressor = import_llmcompressor()
        import compressed_tensors
        import torch
        import transformers

        print(f"llmcompressor {llmcompressor.__version__} ({os.path.dirname(llmcompressor.__file__)}), "
              f"compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__} "
              f"(cuda {torch.cuda.is_available()}), transformers {transformers.__version__}, datasets: {note}")
        return
    if not a.model:
        ap.error("--model is required")
    if not a.no_save and not a.out and not a.calib_only:
        ap.error("--out is required (or --no-save)")
    if a.out and os.path.exists(a.out) and not a.calib_only:
        if not a.force:
            sys.exit(f"{a.out} exists (--force replaces it)")
        shutil.rmtree(a.out)

    t_imp = time.time()
    ds_note = _datasets_stand_in()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from torch.utils.data import DataLoader

    if not a.calib_only:
        llmcompressor = import_llmcompressor()
        import compressed_tensors
        from llmcompressor import oneshot
        from llmcompressor.core import session_functions as sf
        from llmcompressor.modifiers.gptq import GPTQModifier
    import_s = time.time() - t_imp
    log(f"imports {import_s:.1f} s; datasets: {ds_note}")

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    # ---- calibration windows (the e2e clock starts here)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(a.model)
    windows, nrec, bos, eos = build_windows(tok, a.calib, a.nsamples, a.seqlen)
    ids = torch.tensor(windows, dtype=torch.int64)
    calib_sha = hashlib.sha256(ids.to(torch.int32).numpy().astype("<i4").tobytes()).hexdigest()
    calib_s = time.time() - t0
    log(f"calibration: {a.nsamples} concat windows of {a.seqlen} tokens from {nrec} records of {a.calib} "
        f"(bos {bos}, eos {eos}); sha256 {calib_sha[:16]}; {calib_s:.1f} s")
    if a.dump_ids:
        ids.to(torch.int32).numpy().astype("<i4").tofile(a.dump_ids)
    if a.calib_only:
        return

    samples = [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i])} for i in range(a.nsamples)]
    loader = DataLoader(samples, batch_size=1, shuffle=False,
                        collate_fn=lambda b: {k: torch.stack([s[k] for s in b]) for k in b[0]})

    # ---- load
    t1 = time.time()
    # cpu: plain from_pretrained (no device_map), as llm-compressor's examples load for the sequential pipeline
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype="auto",
                                                 device_map=None if a.model_device == "cpu" else a.model_device)
    load_s = time.time() - t1
    n_layers = getattr(model.config, "num_hidden_layers", 0)
    log(f"loaded {a.model} ({model.dtype}, {n_layers} layers, on {a.model_device}) in {load_s:.1f} s")

    # ---- progress: one line per finished sequential subgraph (a decoder layer calibrated and quantized)
    prog = {"done": 0, "t0": None, "last": None}
    orig = sf.LifecycleCallbacks.sequential_epoch_end.__func__

    def timed(cls, modules, **kw):
        r = orig(cls, modules, **kw)
        now = time.time()
        prog["done"] += 1
        prog["last"] = now - prog["t0"]
        line = {"subgraph": prog["done"], "of": n_layers + 1, "t": round(prog["last"], 2)}
        log(f"subgraph {prog['done']} of {n_layers + 1} done at {prog['last']:.1f} s of oneshot")
        if a.progress:
            with open(a.progress, "a") as f:
                f.write(json.dumps(line) + "\n")
        return r

    sf.LifecycleCallbacks.sequential_epoch_end = classmethod(timed)

    # ---- quantize
    actorder = None if a.actorder == "none" else a.actorder
    common = dict(targets="Linear", ignore=["lm_head"], actorder=actorder, dampening_frac=a.damp,
                  block_size=a.block_size)
    if a.observer == "minmax":
        recipe = GPTQModifier(scheme="W4A16", **common)
    else:
        # the W4A16 preset (int4, group 128, symmetric) with the weight observer swapped for gq's scale search
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, preset_name_to_scheme

        w = preset_name_to_scheme("W4A16", ["Linear"]).weights.model_dump()
        w.update(observer="memoryless_mse", observer_kwargs=MSE_KWARGS)
        recipe = GPTQModifier(config_groups={"group_0": QuantizationScheme(
            targets=["Linear"], weights=QuantizationArgs.model_validate(w))}, **common)
    t2 = time.time()
    prog["t0"] = t2
    oneshot(model=model, tokenizer=tok, recipe=recipe, dataset=loader,
            num_calibration_samples=a.nsamples, max_seq_length=a.seqlen,
            sequential_offload_device=a.offload_device)
    if cuda:
        torch.cuda.synchronize()
    quant_s = time.time() - t2
    peak_q = torch.cuda.max_memory_allocated() if cuda else 0
    log(f"oneshot {quant_s:.1f} s")

    # ---- save
    save_s, out_bytes = 0.0, 0
    if not a.no_save:
        t3 = time.time()
        model.save_pretrained(a.out, save_compressed=True)
        tok.save_pretrained(a.out)
        save_s = time.time() - t3
        out_bytes = dir_bytes(a.out)
        log(f"saved {a.out} ({out_bytes / 1e9:.2f} GB) in {save_s:.1f} s")
    e2e_s = time.time() - t0

    dev = torch.cuda.get_device_name(0) if cuda else "cpu"
    res = {
        "peer": "llm-compressor", "version": llmcompressor.__version__,
        "compressed_tensors": compressed_tensors.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "datasets": ds_note, "device": dev,
        "model": a.model, "out": None if a.no_save else a.out,
        "scheme": "W4A16", "group_size": 128, "symmetric": True, "targets": "Linear", "ignore": ["lm_head"],
        "actorder": actorder, "observer": "memoryless_minmax" if a.observer == "minmax" else "memoryless_mse",
        "observer_kwargs": {} if a.observer == "minmax" else MSE_KWARGS, "dampening_frac": a.damp,
        "block_size": a.block_size, "model_device": a.model_device, "offload_device": a.offload_device,
        "nsamples": a.nsamples, "seqlen": a.seqlen, "calib": os.path.relpath(a.calib, REPO),
        "calib_records": nrec, "calib_sha256": calib_sha, "layers": n_layers, "subgraphs_done": prog["done"],
        "import_s": round(import_s, 2), "calib_s": round(calib_s, 2), "load_s": round(load_s, 2),
        "quant_s": round(quant_s, 2), "save_s": round(save_s, 2), "e2e_s": round(e2e_s, 2),
        "process_s": round(time.time() - T_PROC, 2),
        "peak_gpu_alloc_gib": round(peak_q / 2**30, 2),
        "peak_gpu_alloc_with_save_gib": round((torch.cuda.max_memory_allocated() if cuda else 0) / 2**30, 2),
        "peak_gpu_reserved_gib": round((torch.cuda.max_memory_reserved() if cuda else 0) / 2**30, 2),
        "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "out_bytes": out_bytes,
    }
    line = json.dumps(res)
    print(line, flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
