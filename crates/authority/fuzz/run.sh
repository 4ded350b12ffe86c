#!/usr/bin/env bash
# Runs the adapter's fuzz target for a bounded time with its seeds, then prints the libFuzzer figures.
#
#   crates/authority/fuzz/run.sh [authority] SECONDS [libFuzzer args...]
#   one target: authority   (the plugin's own targets are run by fuzz/run.sh; fuzz/run-all.sh runs all)
#
# Works like fuzz/run.sh (see docs/reliability.md, section Fuzzing): needs cargo-fuzz, drives the stable
# toolchain with RUSTC_BOOTSTRAP=1, AddressSanitizer unless FUZZ_SANITIZER=none (then built in
# crates/authority/fuzz/target/san-none). Under crates/authority/fuzz/: new corpus entries in
# corpus/authority, crashes and the log (last-run.log) in artifacts/authority (all gitignored).
set -euo pipefail

[[ "${1:-}" == authority ]] && shift
if [[ $# -lt 1 ]]; then
    sed -n '2,5p' "$0" >&2
    exit 2
fi
target=authority
seconds=$1
shift

# cargo fuzz finds fuzz/ beside the nearest Cargo.toml: run from the crate.
crate="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$crate"

export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
corpus="fuzz/corpus/$target"
seeds="fuzz/seeds/$target"
artifacts="fuzz/artifacts/$target"
mkdir -p "$corpus" "$artifacts"
log="$artifacts/last-run.log"

# Each sanitizer builds into its own target dir, so switching does not rebuild everything.
build=(-s "$sanitizer")
if [[ "$sanitizer" != address ]]; then
    build+=(--target-dir "fuzz/target/san-$sanitizer")
fi
cargo fuzz build "${build[@]}" "$target"

marker="$artifacts/.run-start"
touch "$marker"
start=$(date +%s)
set +e
cargo fuzz run "${build[@]}" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "$@" >"$log" 2>&1
status=$?
set -e
elapsed=$(( $(date +%s) - start ))

stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
execs=$(stat number_of_executed_units)
rate=$(stat average_exec_per_sec)
rss=$(stat peak_rss_mb)
corpus_files=$(find "$corpus" -type f | wc -l)
crashes=$(find "$artifacts" -type f -newer "$marker" \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
tail -n 25 "$log" | grep -E '^(#[0-9]+|Done|stat::|==[0-9]+==|SUMMARY|thread .* panicked)' || true
echo "target=$target sanitizer=$sanitizer seconds=$elapsed executions=${execs:-?} exec_per_sec=${rate:-?} corpus=$corpus_files peak_rss_mb=${rss:-?} crash_artifacts=$crashes libfuzzer_exit=$status"
exit "$status"
