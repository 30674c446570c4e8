#!/usr/bin/env bash
# Merge-minimizes what fuzz/run-all.sh found (fuzz/work/<target>/) with the
# committed corpus into a new fuzz/corpus/<target>/: the smallest set of
# inputs that keeps the coverage (libFuzzer's -merge=1, what `cargo fuzz
# cmin` runs).
set -euo pipefail
cd "$(dirname "$0")"
BIN=target/x86_64-unknown-linux-gnu/release
for t in ${TARGETS:-frame remote_write exposition promql config snapshot}; do
  rm -rf corpus.new/$t && mkdir -p corpus.new/$t
  nice -n 10 $BIN/$t -merge=1 -rss_limit_mb=2048 -timeout=10 corpus.new/$t corpus/$t work/$t \
    > logs/$t.merge.log 2>&1 || { echo "$t: merge failed, see logs/$t.merge.log"; continue; }
  rm -rf corpus/$t && mv corpus.new/$t corpus/$t
  echo "$t: $(ls corpus/$t | wc -l) files, $(du -sk corpus/$t | cut -f1) KiB"
done
rmdir corpus.new 2>/dev/null || true
