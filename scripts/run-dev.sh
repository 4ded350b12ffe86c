#!/usr/bin/env bash
# Runs the plugin on the development SM2 key in keys/ (for demos and tests only, never production).
# Socket: /tmp/gm-kms-plugin/kms.sock. Stop with Ctrl-C (the socket is removed on exit).
# Extra arguments go to the plugin, e.g. `scripts/run-dev.sh --log-format json`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# git checks files out 0644; the plugin refuses a private key that group or others can read.
chmod 600 keys/dev-sm2-key.pem keys/dev-sm2-key-previous.pem
exec cargo run --release --quiet -- -f keys/dev-config.json "$@"
