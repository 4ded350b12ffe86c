//! Runs the Python test oracles in `tests/py/` (independent SM4-GCM, a grpcio KMS client that behaves like
//! kube-apiserver) with the venv and gRPC stubs that `scripts/test.sh` sets up. Only the `#[ignore]`d
//! `live::` tests use it (the live step of `scripts/test.sh`); the default `cargo test` needs no Python.

// Not every test file uses every helper; the unused ones must not fail `clippy -D warnings`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HINT: &str = "run scripts/test.sh first (it creates .venv and target/pystubs)";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python: `GM_KMS_PYTHON`, else `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GM_KMS_PYTHON") {
        return PathBuf::from(p);
    }
    let p = manifest_dir().join(".venv/bin/python");
    assert!(p.exists(), "no Python test venv at {}: {HINT}", p.display());
    p
}

/// The generated Python gRPC stubs: `GM_KMS_PYSTUBS`, else `<repo>/target/pystubs`.
pub fn pystubs() -> PathBuf {
    let p = std::env::var_os("GM_KMS_PYSTUBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target/pystubs"));
    assert!(
        p.join("v2_pb2_grpc.py").exists(),
        "no Python gRPC stubs in {}: {HINT}",
        p.display()
    );
    p
}

/// Runs `tests/py/<script> <args>` with `stdin` on its standard input; returns its stdout, panicking
/// with its stderr if it fails.
fn run_script(script: &str, args: &[&str], stdin: &[u8]) -> String {
    let path = manifest_dir().join("tests/py").join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .env("GM_KMS_PYSTUBS", pystubs())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; {HINT}", path.display()));
    // Feed stdin from a thread so a child that writes before it has read everything cannot deadlock us.
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || pipe.write_all(&input));
    let out = child.wait_with_output().expect("wait for python");
    // A child that exits without reading all its input gives a broken pipe: its exit status says more.
    let fed = feeder.join().expect("stdin feeder thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{stderr}",
        out.status
    );
    fed.unwrap_or_else(|e| panic!("{script}: writing its stdin: {e}\n{stderr}"));
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{script}: stdout not UTF-8: {e}"))
}

/// Runs `tests/py/<script>` with the venv python, feeding `stdin_json`; returns its stdout parsed as one
/// JSON value. Panics with the script's stderr if it fails or prints something else.
pub fn run_json(script: &str, args: &[&str], stdin_json: &serde_json::Value) -> serde_json::Value {
    let stdout = run_script(script, args, stdin_json.to_string().as_bytes());
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{script}: stdout is not one JSON value ({e}):\n{stdout}"))
}

/// Runs `tests/py/kms_client.py` against `socket` (a path, or `@name` for an abstract socket) with the
/// given `:authority` (None: grpcio's default) and a JSON list of calls; returns one result per call,
/// `{"ok": true, ...}` or `{"ok": false, "code": "<grpc status name>", "details": ...}`.
pub fn kms_client(
    socket: &str,
    authority: Option<&str>,
    calls: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let mut args = vec!["--socket", socket, "--script", "-"];
    if let Some(a) = authority {
        args.extend(["--authority", a]);
    }
    let stdout = run_script("kms_client.py", &args, calls.to_string().as_bytes());
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("kms_client.py: bad output line ({e}): {l}"))
        })
        .collect();
    let expected = calls.as_array().map_or(0, Vec::len);
    assert_eq!(
        results.len(),
        expected,
        "kms_client.py: {expected} calls but {} results:\n{stdout}",
        results.len()
    );
    results
}
