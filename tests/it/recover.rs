//! `gm-kms-plugin recover`: values built the way kube-apiserver stores them — independently, by Python
//! `cryptography` and `protobuf` (tests/py/kube_values.py) — around DEK ciphertexts from the real plugin,
//! opened by the real binary, for all four shapes (KMS v1 AES-GCM and AES-CBC, KMS v2 DEK and seed).
//! The frozen set is tests/vectors/kube_values.json; `live::` builds fresh ones with a fresh key.
//! Every failure is one line on stderr and a non-zero exit, never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::plugin::{binary, copy_key, repo, write_config};

/// What one `recover` run gave.
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    /// A failure must be exactly one line, from main, and no panic.
    fn one_line_error(&self) -> &str {
        assert!(!self.ok, "expected a failure, got success: {}", self.stderr);
        assert_eq!(
            self.code,
            Some(1),
            "exit code (101 is a panic): {}",
            self.stderr
        );
        assert!(self.stdout.is_empty(), "a failure wrote to stdout");
        let text = self.stderr.trim_end();
        assert_eq!(text.lines().count(), 1, "not one line:\n{}", self.stderr);
        assert!(text.starts_with("gm-kms-plugin: "), "{text}");
        text
    }

    fn success(&self) -> &[u8] {
        assert!(self.ok, "recover failed: {}", self.stderr);
        assert_eq!(self.stderr.trim_end().lines().count(), 1, "{}", self.stderr);
        assert!(self.stderr.starts_with("recovered "), "{}", self.stderr);
        &self.stdout
    }
}

fn recover(args: &[&str], value: &[u8]) -> Run {
    let mut child = Command::new(binary())
        .arg("recover")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start recover");
    let mut stdin = child.stdin.take().unwrap();
    let value = value.to_vec();
    // From a thread: a process that fails before reading its stdin must not block us.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&value);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The frozen cases of tests/vectors/kube_values.json.
struct Case {
    name: String,
    shape: String,
    etcd_key: String,
    provider: String,
    kek_id: String,
    object: Vec<u8>,
    value: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(repo().join("tests/vectors/kube_values.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let s = |c: &Value, k: &str| c[k].as_str().unwrap().to_string();
    let h = |c: &Value, k: &str| hex::decode(c[k].as_str().unwrap()).unwrap();
    let cases: Vec<Case> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: s(c, "name"),
            shape: s(c, "shape"),
            etcd_key: s(c, "etcd_key"),
            provider: s(c, "provider"),
            kek_id: s(c, "kek_id"),
            object: h(c, "object"),
            value: h(c, "value"),
        })
        .collect();
    for shape in ["v1-gcm", "v1-cbc", "v2-key", "v2-seed"] {
        assert!(
            cases.iter().filter(|c| c.shape == shape).count() >= 2,
            "the frozen set must hold every shape: {shape}"
        );
    }
    cases
}

/// The dev key (mode 0600) and a config around it, and the previous dev key alone in a second config.
struct Keys {
    _dir: tempfile::TempDir,
    key: PathBuf,
    config: PathBuf,
    other_key: PathBuf,
    other_config: PathBuf,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let other_key = copy_key(dir.path(), "dev-sm2-key-previous.pem");
    let config = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}),
    );
    let sub = dir.path().join("other");
    std::fs::create_dir(&sub).unwrap();
    let other_config = write_config(
        &sub,
        &json!({"Sm2PrivateKeyFile": other_key, "HealthAddr": ""}),
    );
    Keys {
        _dir: dir,
        key,
        config,
        other_key,
        other_config,
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn frozen_values_of_all_four_shapes_open_with_a_config_and_with_the_key_alone() {
    let k = keys();
    for c in cases() {
        for args in [
            vec!["-f", p(&k.config), "--etcd-key", &c.etcd_key],
            vec!["--sm2-key", p(&k.key), "--etcd-key", &c.etcd_key],
            vec![
                "--sm2-key",
                p(&k.key),
                "--etcd-key",
                &c.etcd_key,
                "--provider-name",
                &c.provider,
            ],
        ] {
            let r = recover(&args, &c.value);
            assert_eq!(r.success(), c.object.as_slice(), "{} {args:?}", c.name);
            let how = match c.shape.as_str() {
                "v1-gcm" => "KMS v1, AES-GCM",
                "v1-cbc" => "KMS v1, AES-CBC",
                "v2-key" => "AES_GCM_KEY",
                _ => "HKDF_SHA256_XNONCE_AES_GCM_SEED",
            };
            for want in [how, c.kek_id.as_str(), c.etcd_key.as_str()] {
                assert!(
                    r.stderr.contains(want),
                    "{}: {want} not in {}",
                    c.name,
                    r.stderr
                );
            }
        }
    }
}

#[test]
fn a_wrong_etcd_key_is_named_and_cbc_values_were_never_bound_to_theirs() {
    let k = keys();
    for c in cases() {
        let wrong = format!("{}-other", c.etcd_key);
        let r = recover(&["--sm2-key", p(&k.key), "--etcd-key", &wrong], &c.value);
        if c.shape == "v1-cbc" {
            // kube-apiserver <= 1.24 wrote CBC without authentication: it opens under any key, and says so.
            assert_eq!(r.success(), c.object.as_slice());
            assert!(
                r.stderr.contains("not bound to the etcd key"),
                "{}",
                r.stderr
            );
        } else {
            let e = r.one_line_error();
            assert!(
                e.contains("does not open under etcd key") && e.contains(&wrong),
                "{e}"
            );
            assert!(e.contains("--etcd-key"), "{e}");
        }
    }
}

#[test]
fn a_wrong_key_names_both_keys() {
    let k = keys();
    for c in cases() {
        let r = recover(
            &["--sm2-key", p(&k.other_key), "--etcd-key", &c.etcd_key],
            &c.value,
        );
        let e = r.one_line_error();
        assert!(e.contains("wrong key") && e.contains(&c.kek_id), "{e}");
        assert!(e.contains("dev-sm2-key-previous.pem is key sm2-"), "{e}");

        let r = recover(
            &["-f", p(&k.other_config), "--etcd-key", &c.etcd_key],
            &c.value,
        );
        let e = r.one_line_error();
        assert!(
            e.contains(&format!("sealed under key {}", c.kek_id)) && e.contains("does not have"),
            "{e}"
        );
    }
}

#[test]
fn values_of_other_providers_say_what_they_are() {
    let k = keys();
    let c = &cases()[0];
    let key = ["--sm2-key", p(&k.key), "--etcd-key", &c.etcd_key];
    let mut aescbc = b"k8s:enc:aescbc:v1:key1:".to_vec();
    aescbc.extend([0x5a; 48]);
    let mut secretbox = b"k8s:enc:secretbox:v1:key1:".to_vec();
    secretbox.extend([0x5a; 64]);
    for (value, want) in [
        (aescbc, "kube-apiserver's \"aescbc\" provider"),
        (secretbox, "kube-apiserver's \"secretbox\" provider"),
        (c.object.clone(), "not encrypted"),
        (
            b"garbage".to_vec(),
            "no k8s:enc:kms:v1: or k8s:enc:kms:v2: prefix",
        ),
        (Vec::new(), "empty"),
    ] {
        let e = recover(&key, &value).one_line_error().to_string();
        assert!(e.contains(want), "{e}");
    }

    // Another KMS provider name than asked for.
    let mut args = key.to_vec();
    args.extend(["--provider-name", "not-ours"]);
    let e = recover(&args, &c.value).one_line_error().to_string();
    assert!(
        e.contains(&format!("belongs to KMS provider {:?}", c.provider)),
        "{e}"
    );

    // A KMS v1 value whose DEK another plugin sealed: same layout, no format-1 ciphertext inside.
    let mut foreign = format!("k8s:enc:kms:v1:{}:", c.provider).into_bytes();
    foreign.extend(200u16.to_be_bytes());
    foreign.extend([0x42; 200]);
    foreign.extend([0x17; 60]);
    let e = recover(&key, &foreign).one_line_error().to_string();
    assert!(e.contains("another KMS plugin"), "{e}");
    let e = recover(&["-f", p(&k.config), "--etcd-key", &c.etcd_key], &foreign)
        .one_line_error()
        .to_string();
    assert!(e.contains("DEK"), "{e}");
}

#[test]
fn truncated_and_altered_values_fail_in_one_line() {
    let k = keys();
    for c in cases() {
        let key = ["--sm2-key", p(&k.key), "--etcd-key", c.etcd_key.as_str()];
        let prefix = format!("k8s:enc:kms:{}:{}:", &c.shape[..2], c.provider).len();
        // Inside the prefix, the length field or protobuf, the DEK's ciphertext, the data, the last byte.
        let n = c.value.len();
        for cut in [
            3,
            prefix,
            prefix + 1,
            prefix + 2,
            prefix + 60,
            n / 2,
            n - 17,
            n - 1,
        ] {
            let r = recover(&key, &c.value[..cut]);
            let e = r.one_line_error();
            assert!(!e.contains("panicked"), "{} cut at {cut}: {e}", c.name);
        }
        // A flipped bit in the last byte: the tag (GCM) or the padding (CBC) no longer checks. (The
        // annotated v2 value ends with its annotation, which kube-apiserver does not authenticate either.)
        if !c.name.contains("annotated") {
            let mut v = c.value.clone();
            *v.last_mut().unwrap() ^= 1;
            recover(&key, &v).one_line_error();
        }
    }
}

#[test]
fn v2_unknown_dek_source_type_is_refused() {
    let k = keys();
    let c = cases().into_iter().find(|c| c.shape == "v2-key").unwrap();
    let mut v = c.value.clone();
    v.extend([0x28, 0x07]); // field 5 (varint) = 7; the last occurrence wins
    let e = recover(&["--sm2-key", p(&k.key), "--etcd-key", &c.etcd_key], &v)
        .one_line_error()
        .to_string();
    assert!(e.contains("unknown encryptedDEKSourceType 7"), "{e}");
}

#[test]
fn the_newline_etcdctl_adds_is_ignored() {
    let k = keys();
    for c in cases() {
        let mut v = c.value.clone();
        v.push(b'\n');
        let r = recover(&["--sm2-key", p(&k.key), "--etcd-key", &c.etcd_key], &v);
        assert_eq!(r.success(), c.object.as_slice(), "{}", c.name);
        assert!(r.stderr.contains("trailing newline"), "{}", r.stderr);
    }
}

#[test]
fn usage_errors_are_one_line() {
    let k = keys();
    let c = &cases()[0];
    let e = recover(
        &[
            "-f",
            p(&k.config),
            "--sm2-key",
            p(&k.key),
            "--etcd-key",
            &c.etcd_key,
        ],
        &c.value,
    )
    .one_line_error()
    .to_string();
    assert!(e.contains("not both"), "{e}");

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&k.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = recover(
        &["--sm2-key", p(&k.key), "--etcd-key", &c.etcd_key],
        &c.value,
    )
    .one_line_error()
    .to_string();
    assert!(e.contains("--sm2-key") && e.contains("chmod 600"), "{e}");
}

/// The commands of docs/disaster-recovery.md, taken from its `sh` blocks and run as written in a scratch
/// directory: `gm-kms-plugin` is the binary under test, `etcdctl` a stub that prints the frozen
/// `doc-example` value as the real one does (`--print-value-only`: the value and a newline; `-w json`:
/// base64 in `kvs[0].value`). Only the config path and the `<connection flags>` placeholder are swapped.
#[test]
fn the_documented_commands_run_as_written() {
    let doc = std::fs::read_to_string(repo().join("docs/disaster-recovery.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in doc.lines() {
        match line.trim_start() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh => {
                pending.push_str(l.trim_end_matches('\\'));
                if !l.ends_with('\\') {
                    commands.push(std::mem::take(&mut pending));
                }
            }
            _ => {}
        }
    }
    let runnable: Vec<&String> = commands
        .iter()
        .filter(|c| c.contains("gm-kms-plugin recover") || c.starts_with("strings "))
        .collect();
    assert!(runnable.len() >= 4, "{commands:#?}");

    let c = cases()
        .into_iter()
        .find(|c| c.name == "doc-example")
        .unwrap();
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(binary(), bin.join("gm-kms-plugin")).unwrap();
    std::fs::write(dir.path().join("value.raw"), &c.value).unwrap();
    let stub = bin.join("etcdctl");
    std::fs::write(
        &stub,
        "#!/bin/sh\n\
         # A stand-in for etcdctl get: the frozen value, as the real one prints it.\n\
         case \"$*\" in\n\
         *--print-value-only*) cat \"$VALUE\"; echo ;;\n\
         *'-w json'*) printf '{\"kvs\":[{\"value\":\"%s\"}]}' \"$(base64 -w0 \"$VALUE\")\" ;;\n\
         *) exit 2 ;;\n\
         esac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(&k.key, dir.path().join("sm2-key.pem")).unwrap();
    std::fs::set_permissions(
        dir.path().join("sm2-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::copy(dir.path().join("value.raw"), dir.path().join("value.bin")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for command in commands.iter().filter(|c| {
        c.contains("gm-kms-plugin recover") || c.starts_with("strings ") || c.contains("etcdctl")
    }) {
        let cmd = command
            .replace("/etc/k8s-kms-plugin/config.json", p(&k.config))
            .replace("<connection flags> ", "");
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("VALUE", dir.path().join("value.raw"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd}\n{stderr}");
        if command.starts_with("strings ") {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("correct horse battery staple"), "{text}");
        } else if command.contains("> value.bin") {
            assert_eq!(
                std::fs::read(dir.path().join("value.bin")).unwrap(),
                c.value
            );
        } else {
            let got = std::fs::read(dir.path().join("secret1.pb")).unwrap();
            assert_eq!(got, c.object, "{cmd}");
            assert!(
                stderr.starts_with("recovered /registry/secrets/default/secret1"),
                "{stderr}"
            );
        }
    }
}

mod live {
    //! Fresh values: a fresh SM2 key made by OpenSSL, fresh DEKs and seeds sealed by the real plugin's
    //! `encrypt`, and kube-apiserver's layer built by tests/py/kube_values.py with fresh nonces, IVs and
    //! HKDF info, for all four shapes.

    use super::*;
    use crate::support::plugin::openssl_key;
    use crate::support::python::run_json;

    fn encrypt(config: &Path, plain: &[u8]) -> Vec<u8> {
        let mut child = Command::new(binary())
            .args(["encrypt", "-f"])
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(plain).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn random(n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        getrandom::fill(&mut b).unwrap();
        b
    }

    #[test]
    #[ignore = "needs the Python venv (scripts/test.sh)"]
    fn fresh_values_of_all_four_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let key = openssl_key(dir.path(), "fresh-key.pem");
        let config = write_config(
            dir.path(),
            &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}),
        );
        let mut cases = Vec::new();
        let mut objects = Vec::new();
        for (i, shape) in ["v1-gcm", "v1-cbc", "v2-key", "v2-seed"]
            .iter()
            .cycle()
            .take(12)
            .enumerate()
        {
            let dek = random(32);
            let ct = encrypt(&config, &dek);
            let etcd_key = format!("/registry/secrets/ns-{i}/secret-{i}");
            // Objects as kube-apiserver stores them (CBC accepts nothing else); sizes vary.
            let mut object = if i % 2 == 0 {
                b"k8s\0\n\x0c\n\x02v1\x12\x06Secret".to_vec()
            } else {
                b"{\"kind\":\"Widget\",\"spec\":\"".to_vec()
            };
            object.extend(random(1 + i * 97).iter().map(|b| b'a' + b % 26));
            cases.push(json!({
                "name": format!("{shape}-{i}"),
                "shape": shape,
                "dek": hex::encode(&dek),
                "plugin_ciphertext": hex::encode(&ct),
                "etcd_key": etcd_key,
                "provider": format!("fresh-{i}"),
                "object": hex::encode(&object),
            }));
            objects.push((etcd_key, object));
        }
        let out = run_json("kube_values.py", &["--live"], &json!({ "cases": cases }));
        let values = out["values"].as_array().unwrap();
        assert_eq!(values.len(), objects.len());
        for (v, (etcd_key, object)) in values.iter().zip(&objects) {
            let value = hex::decode(v["value"].as_str().unwrap()).unwrap();
            for args in [
                vec!["-f", p(&config), "--etcd-key", etcd_key],
                vec!["--sm2-key", p(&key), "--etcd-key", etcd_key],
            ] {
                let r = recover(&args, &value);
                assert_eq!(r.success(), object.as_slice(), "{} {args:?}", v["name"]);
            }
            let r = recover(
                &["--sm2-key", p(&key), "--etcd-key", "/registry/secrets/x/y"],
                &value,
            );
            if v["name"].as_str().unwrap().starts_with("v1-cbc") {
                assert!(r.ok, "{}", r.stderr);
            } else {
                assert!(r.one_line_error().contains("--etcd-key"));
            }
        }
    }
}
