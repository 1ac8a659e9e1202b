#!/bin/sh
# bench/peer-wheels.sh -- download the wheels that bench/peer.sh installs on the GPU machine
# (llm-compressor 0.14.0.1 and what the machine may lack) into .whl/ (git-ignored; name it in
# the device call's carry). Run here, in the repository root, where pip reaches PyPI.
#
#   sh bench/peer-wheels.sh
#
# What llm-compressor 0.14.0.1 requires (unzip -p .whl/llmcompressor-*.whl '*/METADATA' |
# grep ^Requires-Dist, extras skipped) against the GPU machine's python3 (KINDS.md: torch 2.11.0,
# transformers 5.17.0, accelerate 1.15.0, numpy 2.5.2, huggingface_hub, safetensors, tokenizers):
#   torch, transformers, accelerate, numpy   there
#   pyyaml, tqdm (transformers needs them), pillow (torchvision), psutil (accelerate)   there
#   compressed-tensors==0.19.0               shipped, always installed
#   loguru                                   shipped, installed where missing
#   requests (imported by llmcompressor/transformers/utils/helpers.py at import time)
#       shipped with urllib3, idna, charset-normalizer, certifi; installed where missing
#   pydantic (compressed-tensors, llmcompressor) shipped with pydantic-core, annotated-types,
#       typing-inspection, typing-extensions; installed where missing or too old
#   datasets                                 NOT shipped: imported at module level but only for
#       type hints and loading data sets by name; bench/peer_llmcompressor.py passes a DataLoader
#       and registers a stand-in module where datasets is absent. Shipping it would take
#       datasets 0.6 MB + pyarrow 55.0 MB + pandas 12.0 MB + dill/multiprocess/xxhash 0.7 MB,
#       over the 64 MiB a device call carries.
#   auto-round                               NOT shipped: imported only by AutoRoundModifier
#       (1.4 MB, and it needs datasets too)
#   nvidia-ml-py                             NOT shipped: nothing in llmcompressor or
#       compressed-tensors imports pynvml
# bench/peer.sh decides on the machine which of these to install (docs/peer.md).
set -e
cd "$(dirname "$0")/.."
PINS="llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru==0.7.3
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
requests==2.34.2 urllib3==2.8.0 idna==3.21 charset-normalizer==3.5.3 certifi==2026.10.19.post1"
mkdir -p .whl
grep -qx '/.whl/' .gitignore 2>/dev/null || grep -qx '/.whl/' .git/info/exclude 2>/dev/null ||
    echo '/.whl/' >> .git/info/exclude
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $PINS
# one version of each distribution (two stop the whole install); say what else is in .whl/
python3 - "$PINS" <<'EOF'
import os, re, sys
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
want = {canon(p.split("==")[0]): p.split("==")[1] for p in sys.argv[1].split()}
seen, total, bad = {}, 0, 0
for f in sorted(os.listdir(".whl")):
    if not f.endswith(".whl"):
        continue
    name, ver = canon(f.split("-")[0]), f.split("-")[1]
    size = os.path.getsize(os.path.join(".whl", f))
    if name in seen:
        print(f"peer-wheels: two versions of {name} in .whl/: {seen[name]} and {f}; remove one", file=sys.stderr)
        bad = 1
    seen[name] = f
    if name in want:
        total += size
        print(f"{size / 1e6:7.2f} MB  {f}" + ("" if ver == want[name] else f"   (NOT the pinned {want[name]})"))
    else:
        print(f"{size / 1e6:7.2f} MB  {f}   (not bench/peer.sh's; it travels too)")
missing = sorted(set(want) - set(seen))
if missing:
    print("peer-wheels: missing: " + " ".join(missing), file=sys.stderr)
    bad = 1
print(f"{total / 1e6:7.2f} MB  in {len(want)} wheels for bench/peer.sh")
sys.exit(bad)
EOF
