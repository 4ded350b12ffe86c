//! Issue 13 item 4, as a local attacker would try it: key, PIN and secret files (and a config file that
//! holds a secret) that another uid owns or can replace, a FIFO or a symbolic link where a key should be,
//! and a dangling link where `keygen` writes. Each is refused with a message naming the file and the rule.
//!
//! The attacker is uid 65534 (`nobody`): files are made by it through `setpriv` or handed to it with
//! `chown`, which needs root; as another user these tests say so and pass without trying.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::plugin::{self, Plugin, binary, copy_key, write_config, write_private};

const NOBODY: u32 = 65534;

fn root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("not root: the attacker's side (uid {NOBODY}) cannot be played; skipped");
    }
    root
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

/// Runs `sh -c script` as uid/gid 65534 without supplementary groups, `stdin` on its standard input.
fn as_nobody(script: &str, stdin: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("setpriv");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    assert!(child.wait().unwrap().success(), "as uid {NOBODY}: {script}");
}

/// `gm-kms-plugin check -f config`: success, stdout and stderr, and how long it took.
fn check(config: &Path) -> (bool, String, Duration) {
    let t = Instant::now();
    let out = Command::new(binary())
        .arg("check")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, t.elapsed())
}

fn refused(config: &Path, needles: &[&str]) -> String {
    let (ok, text, took) = check(config);
    assert!(!ok, "accepted:\n{text}");
    for n in needles {
        assert!(text.contains(n), "{n:?} missing:\n{text}");
    }
    assert!(took < Duration::from_secs(2), "took {took:?}:\n{text}");
    text
}

fn sm2_config(dir: &Path, key: &Path) -> PathBuf {
    write_config(dir, &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}))
}

#[test]
fn a_key_file_made_by_another_uid_is_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The attacker may pass through the test's directory (not write it) and owns a directory in it.
    chmod(dir.path(), 0o711);
    let drop = dir.path().join("drop");
    std::fs::create_dir(&drop).unwrap();
    chown(&drop, NOBODY);
    chmod(&drop, 0o755);
    let key = drop.join("k.pem");
    let pem = std::fs::read(plugin::repo().join("keys/dev-sm2-key.pem")).unwrap();
    as_nobody(&format!("umask 077; cat > '{}'", key.display()), &pem);
    assert_eq!(std::fs::metadata(&key).unwrap().uid(), NOBODY);
    let config = sm2_config(dir.path(), &key);
    refused(
        &config,
        &[
            &key.display().to_string(),
            "Sm2PrivateKeyFile",
            "owned by uid 65534",
        ],
    );
    // Root takes the file over; the directory is still the attacker's, who could swap it again.
    chown(&key, 0);
    refused(
        &config,
        &[
            &drop.display().to_string(),
            "directory owned by uid 65534",
            "k.pem",
        ],
    );
    chown(&drop, 0);
    let (ok, text, _) = check(&config);
    assert!(ok, "{text}");
}

#[test]
fn secret_files_owned_by_another_uid_are_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    chown(&key, NOBODY);
    refused(
        &sm2_config(dir.path(), &key),
        &["dev-sm2-key.pem", "owned by uid 65534", "root"],
    );
    // SecretKeyFile: the same rule, named by its field.
    let secret = dir.path().join("secret-key");
    write_private(&secret, "sk\n");
    chown(&secret, NOBODY);
    let config = write_config(
        dir.path(),
        &json!({"KmsKeyId": "k", "AccessKey": "a", "SecretKeyFile": secret, "KmsEndpoint": "127.0.0.1:1",
                "HealthAddr": ""}),
    );
    refused(
        &config,
        &["SecretKeyFile", "secret-key", "owned by uid 65534"],
    );
}

#[test]
fn a_key_in_a_directory_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key = copy_key(&keys, "dev-sm2-key.pem");
    let config = sm2_config(dir.path(), &key);
    for mode in [0o777, 0o775, 0o1777] {
        chmod(&keys, mode);
        refused(
            &config,
            &[
                &keys.display().to_string(),
                &format!("{mode:04o}"),
                "dev-sm2-key.pem",
                "chmod go-w",
            ],
        );
    }
    chmod(&keys, 0o755);
    let (ok, text, _) = check(&config);
    assert!(ok, "{text}");
}

#[test]
fn a_fifo_at_the_key_path_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let made = Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    // Before the fix `check` blocked in open(2) until someone wrote to the FIFO.
    let text = refused(
        &sm2_config(dir.path(), &key),
        &["k.pem", "FIFO", "not a regular file"],
    );
    eprintln!(
        "FIFO at the key path: {}",
        text.lines().last().unwrap_or("")
    );
}

/// A reload that would read a FIFO is refused at once, and the running keys keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_key_path_cannot_hang_a_reload() {
    let s = plugin::sm2_setup(json!({}));
    let p = tokio::task::block_in_place(|| Plugin::start(&s.config, &s.socket));
    let fifo = s.dir.path().join("fifo.pem");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    write_config(
        s.dir.path(),
        &json!({"Sm2PrivateKeyFile": fifo, "GRPCSocketPath": s.socket, "HealthAddr": ""}),
    );
    p.signal("HUP");
    let t = Instant::now();
    while !p.logs().contains("reload refused") {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no refusal in 2 s:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.logs().contains("FIFO"), "{}", p.logs());
    let mut c = plugin::v2(&s.socket).await;
    let ct = plugin::v2_encrypt(&mut c, b"still serving").await.unwrap();
    assert_eq!(
        plugin::v2_decrypt(&mut c, &ct.ciphertext).await.unwrap(),
        b"still serving"
    );
}

#[test]
fn a_symlink_at_the_key_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let link = dir.path().join("link.pem");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    refused(
        &sm2_config(dir.path(), &link),
        &["link.pem", "symbolic link", "Sm2PrivateKeyFile"],
    );
    let (ok, text, _) = check(&sm2_config(dir.path(), &key));
    assert!(ok, "{text}");
}

/// The secret in `SecretKey` gets the protection it would get in `SecretKeyFile`: before the fix a 0644
/// config file holding it was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_with_an_inline_secret_key_must_pass_the_secret_file_rule() {
    use gm_kms_testkit::fake_jdcloud::FakeJdCloud;
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let mut text: serde_json::Value =
        serde_json::from_str(&fake.seed_config_json(dir.path().join("kms.sock").to_str().unwrap()))
            .unwrap();
    text["HealthAddr"] = json!("");
    std::fs::write(&config, text.to_string()).unwrap();
    let run = |p: &Path| tokio::task::block_in_place(|| check(p));

    chmod(&config, 0o644);
    let (ok, out, _) = run(&config);
    assert!(!ok, "{out}");
    for n in [
        "config.json",
        "field SecretKey",
        "0644",
        "chmod 600",
        "SecretKeyFile",
    ] {
        assert!(out.contains(n), "{n:?} missing:\n{out}");
    }
    assert!(!out.contains(fake.secret_key()), "{out}");

    chmod(&config, 0o600);
    let (ok, out, _) = run(&config);
    assert!(ok, "{out}");

    // Through a symbolic link, the file that holds the secret is not the one named.
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&config, &link).unwrap();
    let (ok, out, _) = run(&link);
    assert!(
        !ok && out.contains("link.json") && out.contains("symbolic link"),
        "{out}"
    );

    if root() {
        chown(&config, NOBODY);
        let (ok, out, _) = run(&config);
        assert!(!ok && out.contains("owned by uid 65534"), "{out}");
    }

    // Without a secret in it, a config file may be world-readable and a link (the shipped layout).
    let sm2 = tempfile::tempdir().unwrap();
    let key = copy_key(sm2.path(), "dev-sm2-key.pem");
    let plain = sm2_config(sm2.path(), &key);
    chmod(&plain, 0o644);
    let link = sm2.path().join("current.json");
    std::os::unix::fs::symlink(&plain, &link).unwrap();
    let (ok, out, _) = check(&link);
    assert!(ok, "{out}");
}

fn keygen(out: &Path) -> (bool, String) {
    let o = Command::new(binary())
        .args(["keygen", "--out"])
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn keygen_makes_a_private_directory_and_never_writes_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;

    let fresh = dir.path().join("a/keys");
    let (ok, text) = keygen(&fresh);
    assert!(ok, "{text}");
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&fresh.join("sm2-key.pem")), 0o600);
    assert_eq!(mode(&fresh.join("sm2-pub.pem")), 0o600);
    let (ok, text) = keygen(&fresh);
    assert!(!ok && text.contains("exists"), "{text}");

    // A dangling link planted at either output path: keygen fails, writes nothing anywhere.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    for planted in ["sm2-pub.pem", "sm2-key.pem"] {
        let out = dir.path().join(format!("planted-{planted}"));
        std::fs::create_dir(&out).unwrap();
        chmod(&out, 0o700);
        let target = elsewhere.join(planted);
        std::os::unix::fs::symlink(&target, out.join(planted)).unwrap();
        let (ok, text) = keygen(&out);
        assert!(!ok && text.contains(planted), "{text}");
        assert!(
            std::fs::symlink_metadata(&target).is_err(),
            "written through the link"
        );
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert_eq!(left.len(), 1, "only the planted link: {left:?}");
    }
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

    // A directory others can write: refused, as the plugin would refuse the keys in it.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let (ok, text) = keygen(&open);
    assert!(
        !ok && text.contains("open") && text.contains("chmod go-w"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
}

/// `serve` with `config`: it must exit non-zero at once (within 5 s) with every needle in its output.
fn serve_refused(config: &Path, needles: &[&str]) {
    let mut child = Command::new(binary())
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("plugin served from an untrusted socket directory");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for n in needles {
        assert!(text.contains(n), "{n:?} missing:\n{text}");
    }
}

/// The socket's directory decides who can put a socket of their own where kube-apiserver dials: one
/// that others can write, or that another uid owns, is refused; the socket itself is 0600 from birth.
#[test]
fn the_socket_directory_must_be_trusted_and_the_socket_private() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let socket = run.join("kms.sock");
    let config = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "HealthAddr": "", "GRPCSocketPath": socket}),
    );

    // Anyone may write in it: an attacker could swap the socket for theirs.
    chmod(&run, 0o777);
    serve_refused(&config, &[&run.display().to_string(), "chmod go-w"]);
    assert!(!socket.exists());

    // Another uid owns it.
    chmod(&run, 0o755);
    chown(&run, NOBODY);
    serve_refused(&config, &[&run.display().to_string(), "65534"]);
    assert!(!socket.exists());

    // Trusted: serves, and the socket was never wider than 0600.
    chown(&run, 0);
    let p = Plugin::start(&config, &socket);
    let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    assert!(p.stop().success());
}
