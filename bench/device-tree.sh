#!/bin/sh
# bench/device-tree.sh hide|restore -- the device tool carries the tracked
# tree (64 MiB in all); packed pycoder-30m (52 MB) fits only when the test
# fixtures stay behind. `hide` drops tests/data (except text/) from the git
# index and ignores it, so it does not travel (the files stay on disk);
# `restore` puts the index and the ignore list back. Commit before hiding.
set -e
cd "$(git rev-parse --show-toplevel)"
ex=.git/info/exclude
case "$1" in
hide)
    [ -z "$(git status --porcelain --untracked-files=no)" ] || { echo "commit first"; exit 1; }
    echo "# device-tree: begin" >> "$ex"
    for d in tests/data/*; do
        [ "$d" = tests/data/text ] && continue
        git rm -r -q --cached "$d"
        echo "/$d" >> "$ex"
    done
    echo "# device-tree: end" >> "$ex"
    ;;
restore)
    git reset -q HEAD -- tests/data
    awk '/^# device-tree: begin/ {skip = 1} !skip {print} /^# device-tree: end/ {skip = 0}' "$ex" > "$ex.tmp"
    mv "$ex.tmp" "$ex"
    git status --short | head
    ;;
*) echo "usage: $0 hide|restore"; exit 2 ;;
esac
