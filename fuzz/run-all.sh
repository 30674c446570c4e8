#!/usr/bin/env bash
# Fuzzes every target at once for SECS seconds (default 660) in fork mode,
# continuing past crashes, at the lowest priority. Inputs that add coverage
# go to fuzz/work/<target>/, crashes to fuzz/artifacts/<target>/; then
# merge-minimize into fuzz/corpus/<target>/ with fuzz/minimize.sh. Build
# first: cargo +nightly fuzz build --debug-assertions
set -euo pipefail
cd "$(dirname "$0")"
SECS=${SECS:-660}
BIN=target/x86_64-unknown-linux-gnu/release
declare -A MAX_LEN=([frame]=4096 [remote_write]=8192 [exposition]=16384 [promql]=512 [config]=8192 [snapshot]=4096)
for t in ${TARGETS:-frame remote_write exposition promql config snapshot}; do
  mkdir -p work/$t artifacts/$t logs
  # Seeds (written by tests/it/fuzz_replay.rs write_seed_corpora) if present.
  seeds=(); [ -d seeds/$t ] && seeds=(seeds/$t)
  nice -n 19 /usr/bin/time -f "$t wall %e s, user %U s, sys %S s" -o logs/$t.time \
    $BIN/$t work/$t "${seeds[@]}" corpus/$t -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time=$SECS -max_len=${MAX_LEN[$t]} -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix=artifacts/$t/ > logs/$t.log 2>&1 &
done
wait
