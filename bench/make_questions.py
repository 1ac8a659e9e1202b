#!/usr/bin/env python3
"""Question files for `gq calib` and the calibration experiment (docs/calibration.md).

    python3 bench/make_questions.py SHARED_DATA_DIR OUT_DIR

writes (deterministic):
  humaneval-mbpp.jsonl.gz      {"question", "source"}: the 164 HumanEval prompts (code to
                               complete) then the 974 MBPP task texts, as a base code model sees
                               them: MBPP texts become a docstring-style comment line
  humaneval-mbpp-text.jsonl.gz {"text"}: the same questions alone (calibration set (c))
  stdlib-prompts.jsonl         {"question"}: 300 function headers (def line + docstring) from
                               tests/data/text/python-stdlib-eval.txt, for model-generated
                               evaluation text
"""
import gzip, json, os, re, sys


def main():
    shared, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    qs = []
    with gzip.open(os.path.join(shared, "code/humaneval/HumanEval.jsonl.gz"), "rt") as f:
        for line in f:
            r = json.loads(line)
            qs.append({"question": r["prompt"], "source": r["task_id"]})
    with open(os.path.join(shared, "code/mbpp/mbpp.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            # a base code model answers code, not prose: the task as a comment, then a def line hint
            qs.append({"question": "# " + r["text"].strip() + "\n", "source": "mbpp/%d" % r["task_id"]})
    with gzip.GzipFile(os.path.join(out, "humaneval-mbpp.jsonl.gz"), "wb", mtime=0) as g:
        for q in qs:
            g.write((json.dumps(q) + "\n").encode())
    with gzip.GzipFile(os.path.join(out, "humaneval-mbpp-text.jsonl.gz"), "wb", mtime=0) as g:
        for q in qs:
            g.write((json.dumps({"text": q["question"]}) + "\n").encode())
    text = open(os.path.join(os.path.dirname(__file__), "..", "tests/data/text/python-stdlib-eval.txt")).read()
    # top-level or method defs followed by a triple-quoted docstring
    pat = re.compile(r'^( *)def [^\n]*:\n\1    ("""|\'\'\')(.*?)\2\n', re.S | re.M)
    prompts = [m.group(0) for m in pat.finditer(text) if 40 <= len(m.group(0)) <= 600]
    step = max(1, len(prompts) // 300)
    with open(os.path.join(out, "stdlib-prompts.jsonl"), "w") as f:
        for p in prompts[::step][:300]:
            f.write(json.dumps({"question": p}) + "\n")
    print(f"{len(qs)} questions, {min(300, len(prompts[::step]))} stdlib prompts of {len(prompts)}")


if __name__ == "__main__":
    main()
