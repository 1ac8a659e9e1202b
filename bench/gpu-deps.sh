#!/bin/sh
# bench/gpu-deps.sh -- pack the Debian libraries gq builds against (headers and
# shared objects of OpenBLAS (OpenMP), LAPACKE, jansson, PCRE2, utf8proc, zlib headers,
# libgfortran) into .gqdeps.tar.xz, for a GPU machine that lacks them and
# cannot reach a package registry. bench/gpu.sh unpacks it when needed.
set -e
repo=$(pwd)
tmp=$(mktemp -d)
cd "$tmp"
apt-get download libopenblas0-openmp libopenblas-openmp-dev liblapacke liblapacke-dev libjansson4 libjansson-dev \
    libpcre2-8-0 libpcre2-dev libutf8proc2 libutf8proc-dev zlib1g-dev libgfortran5 libquadmath0 >/dev/null
mkdir root
for d in *.deb; do dpkg -x "$d" root; done
cd root
find . -name '*.a' -delete
rm -rf usr/share usr/bin usr/lib/x86_64-linux-gnu/pkgconfig usr/lib/x86_64-linux-gnu/openblas-openmp/cmake \
    usr/lib/x86_64-linux-gnu/openblas-openmp/pkgconfig usr/lib/x86_64-linux-gnu/libz.so
ln -s libz.so.1 usr/lib/x86_64-linux-gnu/libz.so
cd "$tmp"
tar cJf "$repo/.gqdeps.tar.xz" -C root usr
cd "$repo"
rm -rf "$tmp"
ls -la .gqdeps.tar.xz
