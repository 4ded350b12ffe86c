#!/usr/bin/env bash
# Runs the plugin on the development SM2 key in keys/ (for demos and tests only, never production).
# Socket: /tmp/gm-kms-plugin/kms.sock; health and metrics: http://127.0.0.1:8787/healthz, /metrics.
# Stop with Ctrl-C or SIGTERM (the socket is removed on exit).
# Extra arguments go to the plugin, e.g. `scripts/run-dev.sh --log-format json`.
# The binary: $GM_KMS_PLUGIN if set (the doc test sets it), else a release build, made here if needed
# (`cargo build --release`: a no-op when the quick start's build is up to date).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# git checks files out 0644; the plugin refuses a private key that group or others can read, and one in a
# directory they can write (a clone made under umask 002 has keys/ 0775).
chmod 600 keys/dev-sm2-key.pem keys/dev-sm2-key-previous.pem
chmod go-w keys
bin=${GM_KMS_PLUGIN:-}
if [[ -z $bin ]]; then
    cargo build --release --quiet
    bin=${CARGO_TARGET_DIR:-target}/release/gm-kms-plugin
fi
exec "$bin" -f keys/dev-config.json "$@"
