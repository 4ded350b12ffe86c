#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (one libFuzzer process at a time): fuzz/run-all.sh SECONDS
set -uo pipefail
seconds=${1:?usage: fuzz/run-all.sh SECONDS}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
failed=0
for target in ciphertext open_path config jdcloud_wire authority; do
    "$here/run.sh" "$target" "$seconds" || failed=1
done
exit "$failed"
