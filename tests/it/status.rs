//! `gm-kms-plugin status`: the real binary probing a real plugin over its socket as kube-apiserver does.
//! Like `check`: a line per call on stdout, then one verdict line, `OK` (exit 0) or `FAILED: why` (exit 1,
//! nothing on stderr). No socket is that one line alone; a plugin whose key provider is down fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gm_kms_testkit::fake_jdcloud::FakeJdCloud;
use serde_json::{Value, json};

use crate::support::plugin::{Plugin, binary, sm2_setup, write_private};

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn status(args: &[&str]) -> Out {
    let out = Command::new(binary())
        .arg("status")
        .args(args)
        .output()
        .expect("run status");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `status` until it passes (the plugin's first background health probe may not have run yet).
fn status_until_ok(args: &[&str]) -> Out {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = status(args);
        if out.ok || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The verdict of a failed run: its last stdout line, `FAILED: …`; nothing on stderr.
fn verdict_failed(out: &Out) -> &str {
    assert!(!out.ok, "expected a failure:\n{}", out.stdout);
    assert_eq!(
        out.code,
        Some(1),
        "exit code (101 is a panic): {}",
        out.stderr
    );
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("FAILED: "), "{}", out.stdout);
    last
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_healthy_plugin_passes_with_a_line_per_call() {
    let s = sm2_setup(json!({}));
    let _plugin = Plugin::start(&s.config, &s.socket);
    for args in [vec!["-f", p(&s.config)], vec!["--socket", p(&s.socket)]] {
        let out = status_until_ok(&args);
        assert!(out.ok, "{args:?}:\n{}{}", out.stdout, out.stderr);
        assert!(out.stderr.is_empty(), "{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        let expect = [
            format!("socket {}: connected (", s.socket.display()),
            format!(
                "v1beta1 Version: version v1beta1, runtime gm-kms-plugin {} (",
                env!("CARGO_PKG_VERSION")
            ),
            "v2 Status: version v2, healthz ok, key_id sm2-".into(),
            "v2 Encrypt: ".into(),
            "v2 Decrypt: the same 32 bytes back (".into(),
            "v1beta1 Encrypt: ".into(),
            "v1beta1 Decrypt: the same 32 bytes back (".into(),
            "OK".into(),
        ];
        assert_eq!(lines.len(), expect.len(), "{}", out.stdout);
        for (line, want) in lines.iter().zip(&expect) {
            assert!(
                line.starts_with(want.as_str()),
                "{line:?} should start with {want:?}"
            );
        }
        // The key id of Status is the one Encrypt used (kube-apiserver's rule).
        let id = |l: &str| {
            l.split("key_id ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(id(lines[2]).trim_end_matches(','), id(lines[3]));
    }
}

#[test]
fn no_plugin_is_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let out = status(&["--socket", p(&missing)]);
    let e = verdict_failed(&out);
    assert!(
        e.contains("cannot connect to the plugin at") && e.contains("No such file or directory"),
        "{e}"
    );
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);

    // A socket file that nothing listens on any more (a plugin that died without clean-up).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = status(&["--socket", p(&stale)]);
    assert!(
        verdict_failed(&out).contains("Connection refused"),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);

    // -f and --socket together: a usage error, one line on stderr.
    let out = status(&["-f", "/nonexistent.json", "--socket", p(&stale)]);
    assert_eq!(out.code, Some(1));
    let e = out.stderr.trim_end();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("gm-kms-plugin: ") && e.contains("not both"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_key_provider_is_down_fails() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms-plugin.sock");
    let mut config: Value =
        serde_json::from_str(&fake.seed_config_json(socket.to_str().unwrap())).unwrap();
    config["KmsTimeoutMs"] = json!(300);
    let path = dir.path().join("config.json");
    write_private(&path, config.to_string());
    // Down before the plugin starts: it serves, but cannot wrap a data key or pass its health probe.
    fake.set_down(true).await;
    let _plugin = tokio::task::block_in_place(|| Plugin::start(&path, &socket));

    let out = tokio::task::block_in_place(|| status(&["--socket", p(&socket)]));
    let e = verdict_failed(&out).to_string();
    assert!(
        e.contains(&format!("plugin at {}", socket.display())),
        "{e}"
    );
    assert!(e.contains("v2 Status") && e.contains("healthz"), "{e}");
    assert!(e.ends_with("more above)"), "{e}");
    // It still says what it saw, step by step.
    for want in [
        "v1beta1 Version: version v1beta1",
        "v2 Status: FAILED: ",
        "v2 Encrypt: FAILED: ",
        "v2 Decrypt: skipped",
        "v1beta1 Encrypt: FAILED: ",
    ] {
        assert!(out.stdout.contains(want), "{want} not in:\n{}", out.stdout);
    }
}
