#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (one libFuzzer process at a time): fuzz/run-all.sh SECONDS
# The plugin's targets (fuzz/), then the :authority adapter's (crates/authority/fuzz/).
set -uo pipefail
seconds=${1:?usage: fuzz/run-all.sh SECONDS}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
failed=0
for target in ciphertext open_path config jdcloud_wire; do
    "$here/run.sh" "$target" "$seconds" || failed=1
done
# The HTTP/2 :authority adapter's target lives with its crate.
"$here/../crates/authority/fuzz/run.sh" authority "$seconds" || failed=1
exit "$failed"
