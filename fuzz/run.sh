#!/usr/bin/env bash
# Runs one fuzz target for a bounded time with its seeds, then prints the libFuzzer figures.
#
#   fuzz/run.sh TARGET SECONDS [libFuzzer args...]
#   targets: ciphertext open_path config jdcloud_wire   (fuzz/run-all.sh SECONDS runs each in turn, then the
#   :authority adapter's target with crates/authority/fuzz/run.sh, which takes the same arguments)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It drives the stable toolchain with RUSTC_BOOTSTRAP=1,
# because cargo-fuzz passes nightly -Z flags (-Zsanitizer=address). Build: release with debug assertions and
# overflow checks, AddressSanitizer, libFuzzer from libfuzzer-sys; FUZZ_SANITIZER=none drops ASan (about
# twice the executions per second; built in fuzz/target/san-none).
# New corpus entries go to fuzz/corpus/TARGET (gitignored), crashes to fuzz/artifacts/TARGET (gitignored),
# the log to fuzz/artifacts/TARGET/last-run.log. One libFuzzer process, one core.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,7p' "$0" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ -f "fuzz/fuzz_targets/$target.rs" ]] || { echo "no fuzz target $target" >&2; exit 2; }

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
