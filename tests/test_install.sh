#!/bin/sh
# tests/test_install.sh -- `make install` / `make uninstall` (DESTDIR, PREFIX) and where gq finds its
# bundled data (gq/datadir.h): the installed binary, run from another directory, reads
# share/gq/calib/; the build's binary, run from another directory, reads the source tree's calib/;
# $GQ_DATA_DIR overrides both; a binary with neither says where it looked (exit status 3).
# Run by tests/run.sh from the source tree (GQ_BIN: the binary, GQ_BUILD: its build directory). The
# nested `make install` gets BUILD=$GQ_BUILD and the CC, CUDA, SAN and DEBUG the build was made with (read
# from $GQ_BUILD/.flags), so that it finds everything up to date instead of rebuilding with other
# flags; other variables (DEPS=...) come through MAKEFLAGS under `make test`. Prints RESULT p f s.
GQ=${GQ_BIN:-build/gq}
B=${GQ_BUILD:-$(dirname "$GQ")}
SRC=$(pwd -P)
case $GQ in /*) ;; *) GQ=$SRC/$GQ ;; esac
M=$SRC/tests/data/pycoder-5m
T=${TMPDIR:-/tmp}/gq-test-install-$$
mkdir -p "$T" && T=$(cd "$T" && pwd -P) # physical path: gq prints the data path resolved
p=0; f=0; s=0
check() { # check "what" expected-status command...: status and stderr/stdout kept in $T/out
    what=$1 want=$2
    shift 2
    "$@" > "$T/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL install: $what: exit status $rc, expected $want"; tail -5 "$T/out"; fi
}
has() { # has "what" "text": the last command's output contains text
    if grep -qF -- "$2" "$T/out"; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL install: $1: output lacks '$2'"; tail -5 "$T/out"; fi
}
installed() { # installed "path under the install root"
    if [ -f "$T/root/usr/$1" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL install: $T/root/usr/$1 not installed"; fi
}
# the small quantization every case runs: GPTQ with the default --calib, from / (no calib/ there); one
# thread, as OpenMP barriers crawl when other jobs share the cores
from_root() { (cd / && "$@"); }
quant() { # quant "what" expected-status binary [env assignments]
    what=$1 want=$2 bin=$3
    shift 3
    check "$what" "$want" from_root env "$@" "$bin" quantize --model "$M" --out "$T/q" --method gptq \
        --nsamples 2 --seqlen 64 --threads 1 --force
}

# -- the build's binary from another directory: the source tree's calib/
quant "build binary from /" 0 "$GQ"
has "build binary: source tree's calib" "calib            $SRC/calib/python-sitepackages.jsonl"

# -- $GQ_DATA_DIR wins, and is not second-guessed
mkdir -p "$T/data"
quant "GQ_DATA_DIR without the file" 3 "$GQ" GQ_DATA_DIR="$T/data"
has "GQ_DATA_DIR: names the file" "$T/data/calib/python-sitepackages.jsonl: cannot open"

# -- a binary with no data near it: the error says where it looked; RTN needs no data
mkdir -p "$T/lone/bin" && cp "$GQ" "$T/lone/bin/gq"
quant "lone binary" 3 "$T/lone/bin/gq"
has "lone binary: where it looked" "default --calib: calib/python-sitepackages.jsonl: not found"
has "lone binary: names the install path" "$T/lone/bin/../share/gq"
quant "lone binary, GQ_DATA_DIR=source tree" 0 "$T/lone/bin/gq" GQ_DATA_DIR="$SRC"
has "lone binary, GQ_DATA_DIR: the path" "calib            $SRC/calib/python-sitepackages.jsonl"
check "lone binary: rtn needs no calibration data" 0 from_root "$T/lone/bin/gq" quantize --model "$M" --out "$T/q" \
    --method rtn --force

# -- make install DESTDIR=... PREFIX=/usr, then the installed binary from /
if ! command -v make > /dev/null || [ ! -f Makefile ] || [ ! -f "$B/.flags" ]; then
    s=$((s + 1)); echo "SKIP install: make install: no make, no Makefile here or no $B/.flags (GQ_BUILD)"
else
    flags=$(cat "$B/.flags")
    mk="CC=${flags%% *}"
    case $flags in *-DGQ_USE_CUDA*) mk="$mk CUDA=1" ;; *) mk="$mk CUDA=0" ;; esac
    case $flags in *-fsanitize*) mk="$mk SAN=1" ;; *) mk="$mk SAN=0" ;; esac
    case $flags in *"-O0 -g"*) mk="$mk DEBUG=1" ;; *) mk="$mk DEBUG=0" ;; esac
    # shellcheck disable=SC2086 # $mk: several words
    check "make install" 0 make -s install $mk BUILD="$B" DESTDIR="$T/root" PREFIX=/usr
    for x in bin/gq lib/libgq.a include/gq/common.h include/gq/datadir.h share/gq/calib/README.md \
        share/gq/calib/python-sitepackages.jsonl share/gq/calib/pycoder-30m-selfgen.jsonl.gz \
        share/gq/calib/questions/humaneval-mbpp.jsonl.gz; do
        installed "$x"
    done
    quant "installed binary from /" 0 "$T/root/usr/bin/gq"
    has "installed binary: share/gq" "calib            $T/root/usr/share/gq/calib/python-sitepackages.jsonl"
    check "installed --version" 0 "$T/root/usr/bin/gq" --version
    has "installed --version" "gq "
    # shellcheck disable=SC2086
    check "make uninstall" 0 make -s uninstall $mk BUILD="$B" DESTDIR="$T/root" PREFIX=/usr
    left=$(find "$T/root" -type f | head -3)
    if [ -z "$left" ]; then p=$((p + 1)); else f=$((f + 1)); echo "FAIL install: make uninstall left $left"; fi
fi
rm -rf "$T"
echo "test_install.sh: $p passed, $f failed, $s skipped"
echo "RESULT $p $f $s"
[ "$f" -eq 0 ]
