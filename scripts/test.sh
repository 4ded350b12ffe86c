#!/usr/bin/env bash
# Runs the whole test suite: sets up the Python test tools (.venv, gRPC stubs), then two steps:
#   1. `cargo test --workspace --all-targets`: every test that needs no Python (the oracles' answers are frozen in
#      tests/vectors/ by tests/py/gen_vectors.py); this is what a machine without the venv can run too.
#   2. live oracles: `tests/py/gen_vectors.py --check` (the frozen answers are still what the oracles say),
#      then exactly the `#[ignore]`d `live::` tests, which run the Python oracles at test time (fresh
#      SM4-GCM cases in `cryptography`, the official JD Cloud SDK's signer, a grpcio client sending every
#      `:authority` kube-apiserver sends): `cargo test --lib --test it -- --ignored live::`.
# Usage: scripts/test.sh [--no-live | --live-only | --print-paths] [cargo test args...]
#   e.g. scripts/test.sh --lib, scripts/test.sh -- --nocapture; the args go to step 1 only.
#   --print-paths prints where the script writes (VENV=…, STUBS=…, PYCACHE=…) and exits.
# Needs only the Rust toolchain, the openssl CLI, python3 and pip; everything else comes from PyPI.
# Writes: the venv (.venv), the gRPC stubs (target/pystubs) and Python's bytecode cache (target/pycache);
# with CARGO_TARGET_DIR set, all three go under it instead and nothing is written into the source tree.
set -euo pipefail

steps=both
case ${1-} in
--no-live) steps=main; shift ;;
--live-only) steps=live; shift ;;
--print-paths) steps=none; shift ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
REQ=$ROOT/scripts/requirements-test.txt
if [[ -n ${CARGO_TARGET_DIR-} ]]; then
    TARGET=$(realpath -m -- "$CARGO_TARGET_DIR")
    VENV=$TARGET/venv
else
    TARGET=$ROOT/target
    VENV=$ROOT/.venv
fi
STUBS=$TARGET/pystubs
STAMP=$VENV/.requirements.sha256
# Python's bytecode caches (__pycache__ next to tests/py/*.py otherwise) go under the target directory.
export PYTHONPYCACHEPREFIX=$TARGET/pycache

if [[ $steps == none ]]; then
    printf 'VENV=%s\nSTUBS=%s\nPYCACHE=%s\n' "$VENV" "$STUBS" "$PYTHONPYCACHEPREFIX"
    exit 0
fi

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
say "generating Python gRPC stubs in $STUBS"
rm -rf "$STUBS"
mkdir -p "$STUBS"
"$VENV/bin/python" -m grpc_tools.protoc -I proto --python_out="$STUBS" --grpc_python_out="$STUBS" \
    proto/v1beta1.proto proto/v2.proto

# 4. The Rust tests find the tools through these (tests/it/support/python.rs).
export GM_KMS_PYTHON=$VENV/bin/python
export GM_KMS_PYSTUBS=$STUBS

# 5. Step 1, the main run. --show-output: the tests that measure (remote-call counts, overheads) print
#    their numbers even when they pass, so they land in the CI log.
if [[ $steps != live ]]; then
    args=("$@")
    if [[ " ${args[*]-} " == *" -- "* ]]; then args+=(--show-output); else args+=(-- --show-output); fi
    say "step 1/2: cargo test --workspace --all-targets ${args[*]}"
    cargo test --workspace --all-targets "${args[@]}"
fi

# 6. Step 2, the live oracles (the only tests that run Python; all `#[ignore]`d in step 1).
if [[ $steps != main ]]; then
    say "step 2/2, live oracles: tests/py/gen_vectors.py --check"
    "$VENV/bin/python" tests/py/gen_vectors.py --check
    say "step 2/2, live oracles: cargo test --lib --test it -- --ignored live::"
    cargo test --lib --test it -- --ignored live:: --show-output
fi
