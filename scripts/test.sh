#!/usr/bin/env bash
# Runs the whole test suite: sets up the Python test tools (.venv, gRPC stubs), then `cargo test`.
# Usage: scripts/test.sh [cargo test args...]   e.g. scripts/test.sh --lib, scripts/test.sh -- --nocapture
# Needs only the Rust toolchain, the openssl CLI, python3 and pip; everything else comes from PyPI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
REQ=$ROOT/scripts/requirements-test.txt
STUBS=$ROOT/target/pystubs
STAMP=$VENV/.requirements.sha256

say() { printf '==> %s\n' "$*"; }

# 1. The venv. A Debian python3 without python3-venv cannot seed pip into a venv; then make it without
#    pip and let the outer pip install into it (`pip --python`), so no apt package is needed.
if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" 2>/dev/null || python3 -m venv --without-pip "$VENV"
fi
if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    pip() { "$VENV/bin/python" -m pip --disable-pip-version-check --no-input "$@"; }
else
    pip() { python3 -m pip --python "$VENV/bin/python" --disable-pip-version-check --no-input "$@"; }
fi

# 2. The pinned packages, only when the requirements changed since the last successful install.
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [[ ! -f $STAMP || $(cat "$STAMP") != "$want" ]]; then
    say "installing Python test tools (scripts/requirements-test.txt)"
    start=$SECONDS
    # wheel first: jdcloud-sdk is an sdist and builds cleanly only with wheel already present.
    pip install -q "$(grep -E '^wheel==' "$REQ")"
    pip install -q -r "$REQ"
    echo "$want" >"$STAMP"
    say "Python test tools installed in $((SECONDS - start)) s"
else
    say "Python test tools up to date"
fi

# 3. Python gRPC stubs for both KMS APIs. grpc_tools carries its own protoc, so none is needed on the
#    machine; regenerated every run because it takes well under a second and can never go stale.
say "generating Python gRPC stubs in target/pystubs"
rm -rf "$STUBS"
mkdir -p "$STUBS"
"$VENV/bin/python" -m grpc_tools.protoc -I proto --python_out="$STUBS" --grpc_python_out="$STUBS" \
    proto/v1beta1.proto proto/v2.proto

# 4. The Rust tests find the tools through these (tests/it/support/python.rs).
export GM_KMS_PYTHON=$VENV/bin/python
export GM_KMS_PYSTUBS=$STUBS

# --show-output: the tests that measure (remote-call counts, overheads) print their numbers even when
# they pass, so they land in the CI log.
args=("$@")
if [[ " ${args[*]-} " == *" -- "* ]]; then args+=(--show-output); else args+=(-- --show-output); fi
say "cargo test --all-targets ${args[*]}"
exec cargo test --all-targets "${args[@]}"
