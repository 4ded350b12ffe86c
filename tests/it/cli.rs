//! The command line: `check` on good and bad configs (every error names the field or file at fault).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::json;

use crate::support::plugin::{binary, copy_key, write_config};

fn check(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(binary())
        .arg("check")
        .arg("-f")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_passes_on_the_dev_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let config = write_config(dir.path(), &json!({"Sm2PrivateKeyFile": key}));
    let (ok, text) = check(&config);
    assert!(ok, "{text}");
    assert!(text.contains("self-tests"), "{text}");
    assert!(text.contains("seal/open round trip: ok"), "{text}");
}

#[test]
fn the_shipped_dev_config_checks() {
    // keys/dev-config.json as the quick start uses it (the run script makes the key 0600 first).
    let dir = tempfile::tempdir().unwrap();
    copy_key(dir.path(), "dev-sm2-key.pem");
    std::fs::copy(
        crate::support::plugin::repo().join("keys/dev-config.json"),
        dir.path().join("dev-config.json"),
    )
    .unwrap();
    let (ok, text) = check(&dir.path().join("dev-config.json"));
    assert!(ok, "{text}");
}

#[test]
fn config_errors_name_the_field_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");

    // Missing key file.
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": dir.path().join("nope.pem")}),
    );
    let (ok, text) = check(&c);
    assert!(
        !ok && text.contains("nope.pem") && text.contains("Sm2PrivateKeyFile"),
        "{text}"
    );

    // Loose permissions.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = write_config(dir.path(), &json!({"Sm2PrivateKeyFile": key}));
    let (ok, text) = check(&c);
    assert!(
        !ok && text.contains("dev-sm2-key.pem")
            && text.contains("0644")
            && text.contains("chmod 600"),
        "{text}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Unknown field.
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "Sm2PrivateKey": "x"}),
    );
    let (ok, text) = check(&c);
    assert!(
        !ok && text.contains("unknown field Sm2PrivateKey") && text.contains("config.json"),
        "{text}"
    );

    // Bad JSON.
    std::fs::write(&c, b"{\"Sm2PrivateKeyFile\": ").unwrap();
    let (ok, text) = check(&c);
    assert!(
        !ok && text.contains("config.json") && text.contains("JSON"),
        "{text}"
    );

    // Not a key at all.
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = write_config(dir.path(), &json!({"Sm2PrivateKeyFile": junk}));
    let (ok, text) = check(&c);
    assert!(!ok && text.contains("junk.pem"), "{text}");

    // jdcloud is selectable and validated; a missing field is named.
    let c = write_config(
        dir.path(),
        &json!({"KmsKeyId": "k", "AccessKey": "a", "SecretKey": "s"}),
    );
    let (ok, text) = check(&c);
    assert!(!ok && text.contains("KmsEndpoint"), "{text}");

    // Missing config file.
    let (ok, text) = check(&dir.path().join("absent.json"));
    assert!(!ok && text.contains("absent.json"), "{text}");
}

#[test]
fn socket_path_that_is_not_a_socket_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let path = dir.path().join("precious.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": path, "HealthAddr": ""}),
    );
    let out = Command::new(binary()).arg("-f").arg(&c).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("precious.txt") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

// ---------------------------------------------------------------------------------------------------
// Issue 14: errors said once, check's verdict, keys made by `openssl ecparam`, logging, small defects.

/// Runs the binary with `args` (and `stdin`); exit success, stdout, stderr.
fn run(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let (ok, out, err) = run_bytes(args, stdin);
    (ok, String::from_utf8_lossy(&out).into_owned(), err)
}

/// [`run`] with stdout as bytes (a ciphertext).
fn run_bytes(args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
    use std::io::Write as _;
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading stdin closes it: that is not the test's failure.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Defect 1: an error with an OS cause is one line, and says the cause once.
#[test]
fn errors_with_an_os_cause_are_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let once = |args: &[&str], stdin: &[u8], cause: &str| {
        let (ok, _, err) = run(args, stdin);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line:\n{err}");
        assert!(err.starts_with("gm-kms-plugin: "), "{err}");
        assert_eq!(
            err.matches(cause).count(),
            1,
            "{args:?}: {cause:?} once:\n{err}"
        );
    };
    // A config file that is not there.
    let absent = dir.path().join("absent.json");
    once(
        &["encrypt", "-f", path_str(&absent)],
        b"x",
        "No such file or directory (os error 2)",
    );
    // A key file that is not there.
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": dir.path().join("nope.pem"), "HealthAddr": ""}),
    );
    once(
        &["encrypt", "-f", path_str(&c)],
        b"x",
        "No such file or directory (os error 2)",
    );
    // A key file others can read.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}),
    );
    once(&["decrypt", "-f", path_str(&c)], b"x", "permissions 0644");
    // `File exists`: keygen into a path that is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    once(
        &["keygen", "--out", path_str(&file)],
        b"",
        "File exists (os error 17)",
    );
}

/// Defect 6: `check` refuses the example's placeholders by field name, before any network, and ends with
/// one verdict line; the exit code matches.
#[test]
fn check_refuses_placeholders_and_ends_with_one_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let jd = dir.path().join("config-jdcloud.json");
    crate::support::plugin::write_private(
        &jd,
        std::fs::read(crate::support::plugin::repo().join("deploy/config-jdcloud.json")).unwrap(),
    );
    let started = std::time::Instant::now();
    let (ok, out, err) = run(&["check", "-f", path_str(&jd)], b"");
    assert!(!ok, "{out}{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "no network: {:?}",
        started.elapsed()
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("FAILED: ") && last.contains("AccessKey") && last.contains("placeholder"),
        "{out}"
    );
    assert_eq!(out, format!("{last}\n"), "the verdict alone");
    assert!(err.is_empty(), "nothing on stderr: {err}");

    // Real-looking values, an endpoint that refuses connections: one verdict, no WARN lines.
    let c = write_config(
        dir.path(),
        &json!({"AccessKey": "ak", "SecretKey": "sk", "KmsEndpoint": "127.0.0.1:1", "KmsSchema": "http",
                "KmsKeyId": "k", "KmsTimeoutMs": 200, "HealthAddr": ""}),
    );
    let (ok, out, err) = run(&["check", "-f", path_str(&c)], b"");
    assert!(!ok, "{out}{err}");
    let verdicts: Vec<&str> = out
        .lines()
        .filter(|l| *l == "OK" || l.starts_with("FAILED: "))
        .collect();
    assert_eq!(verdicts.len(), 1, "{out}");
    assert!(out.lines().last().unwrap().starts_with("FAILED: "), "{out}");
    assert!(
        !err.contains("WARN") && !out.contains("WARN"),
        "{out}\n{err}"
    );
    assert!(err.is_empty(), "{err}");

    // And a good config ends with OK, exit 0.
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}),
    );
    let (ok, out, err) = run(&["check", "-f", path_str(&c)], b"");
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().last(), Some("OK"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    assert!(err.is_empty(), "no log lines: {err}");
    // The public development key is named as such.
    assert!(out.contains("public development key"), "{out}");

    // A config that does not load is a verdict too, not a second error line.
    let (ok, out, err) = run(
        &["check", "-f", path_str(&dir.path().join("absent.json"))],
        b"",
    );
    assert!(!ok && err.is_empty(), "{err}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("FAILED: config file "),
        "{out}"
    );
}

/// `-f` is optional: the default config path is the one deploy/ uses.
#[test]
fn the_config_defaults_to_the_deploy_path() {
    let (ok, out, _) = run(&["check"], b"");
    if std::path::Path::new("/etc/k8s-kms-plugin/config.json").exists() {
        return; // a machine that has one: nothing to learn here
    }
    assert!(!ok);
    assert!(
        out.contains("/etc/k8s-kms-plugin/config.json") && out.contains("FAILED"),
        "{out}"
    );
    let (_, out, _) = run(&["--help"], b"");
    assert!(
        out.contains("/etc/k8s-kms-plugin/config.json") && out.contains("--log-level"),
        "{out}"
    );
}

/// Defect 3: the key file `openssl ecparam -genkey -name SM2` writes (an `SM2 PARAMETERS` block, then the
/// key), and the SEC1 form `openssl ec` writes, are accepted, with the id OpenSSL's public key gives.
#[test]
fn keys_from_openssl_ecparam_and_ec_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ec = dir.path().join("ecparam.pem");
    let sec1 = dir.path().join("sec1.pem");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    openssl(&["ecparam", "-genkey", "-name", "SM2", "-out", path_str(&ec)]);
    let text = std::fs::read_to_string(&ec).unwrap();
    assert!(text.starts_with("-----BEGIN SM2 PARAMETERS-----"), "{text}");
    openssl(&["ec", "-in", path_str(&ec), "-out", path_str(&sec1)]);
    // The id of DESIGN §4, computed by OpenSSL: SM3 of the SubjectPublicKeyInfo DER.
    let spki = openssl(&["pkey", "-in", path_str(&ec), "-pubout", "-outform", "DER"]);
    let der = dir.path().join("pub.der");
    std::fs::write(&der, spki).unwrap();
    let digest = String::from_utf8(openssl(&["dgst", "-sm3", "-r", path_str(&der)])).unwrap();
    let id = format!("sm2-{}", &digest[..16]);
    for key in [&ec, &sec1] {
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = write_config(
            dir.path(),
            &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}),
        );
        let (ok, out, err) = run(&["check", "-f", path_str(&c)], b"");
        assert!(ok, "{}: {out}{err}", key.display());
        assert!(out.contains(&format!("key {id} (primary, sm2)")), "{out}");
        let (ok, ct, err) = run_bytes(
            &["encrypt", "-f", path_str(&c)],
            b"sealed by an ecparam key",
        );
        assert!(ok, "{err}");
        let (ok, pt, err) = run(&["decrypt", "-f", path_str(&c)], &ct);
        assert!(ok && pt == "sealed by an ecparam key", "{err}");
    }
    // Only the parameters (ecparam without -genkey): the error says what the file holds.
    let params = dir.path().join("params.pem");
    openssl(&["ecparam", "-name", "SM2", "-out", path_str(&params)]);
    std::fs::set_permissions(&params, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": params, "HealthAddr": ""}),
    );
    let (ok, out, _) = run(&["check", "-f", path_str(&c)], b"");
    assert!(
        !ok && out.contains("no private key in the file (only SM2 PARAMETERS)"),
        "{out}"
    );
    // A P-256 key: named as what it is.
    let p256 = dir.path().join("p256.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path_str(&p256),
    ]);
    std::fs::set_permissions(&p256, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": p256, "HealthAddr": ""}),
    );
    let (ok, out, _) = run(&["check", "-f", path_str(&c)], b"");
    assert!(
        !ok && out.contains("P-256") && out.contains("not SM2"),
        "{out}"
    );
}

/// Defect 8: `keygen --help` lists only what keygen uses, and `-f` given to it is refused.
#[test]
fn keygen_help_lists_only_its_own_flags() {
    let (ok, out, _) = run(&["keygen", "--help"], b"");
    assert!(ok, "{out}");
    assert!(out.contains("--out"), "{out}");
    for flag in ["--config", "-f", "--log-format", "--log-level"] {
        assert!(
            !out.split_whitespace()
                .any(|w| w.trim_end_matches(',') == flag),
            "{flag} in:\n{out}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(
        &[
            "keygen",
            "-f",
            "/x.json",
            "--out",
            path_str(&dir.path().join("k")),
        ],
        b"",
    );
    assert!(!ok && err.contains("keygen reads no config"), "{err}");
    assert!(!dir.path().join("k").exists());
}

/// Defect 8: a config that is a JSON array names no internal type; `encrypt` prints nothing on stderr.
#[test]
fn one_shot_commands_are_quiet_and_errors_name_no_internal_type() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("array.json");
    std::fs::write(&c, b"[]").unwrap();
    let (ok, out, err) = run(&["encrypt", "-f", path_str(&c)], b"x");
    assert!(
        !ok && !err.contains("Raw") && err.contains("a JSON object"),
        "{out}{err}"
    );
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let c = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}),
    );
    let (ok, ct, err) = run_bytes(&["encrypt", "-f", path_str(&c)], b"quiet");
    assert!(ok && err.is_empty(), "stderr: {err}");
    let (ok, pt, err) = run(&["decrypt", "-f", path_str(&c)], &ct);
    assert!(ok && err.is_empty() && pt == "quiet", "stderr: {err}");
    // Unless asked.
    let (ok, _, err) = run(
        &["encrypt", "--log-level", "info", "-f", path_str(&c)],
        b"loud",
    );
    assert!(ok && err.contains("new data key in use"), "{err}");
}

/// A plugin started with extra command-line arguments; its log in `dir/plugin.log`.
struct Serving {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Serving {
    fn start(config: &std::path::Path, socket: &std::path::Path, args: &[&str]) -> Self {
        let log = config.with_extension("log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary())
            .args(args)
            .arg("-f")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let s = Serving { child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "not ready:\n{}",
                s.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        s
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hup(&self) {
        assert!(
            Command::new("kill")
                .args(["-HUP", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits until the log holds `needle` `n` times.
    fn wait_for(&self, needle: &str, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.logs().matches(needle).count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{needle:?} ×{n} not logged:\n{}",
                self.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A format-1 ciphertext whose wrapped data key is corrupted: the provider's unwrap fails.
async fn corrupted(c: &mut crate::support::plugin::V2) -> Vec<u8> {
    let mut ct = crate::support::plugin::v2_encrypt(c, b"payload")
        .await
        .unwrap()
        .ciphertext;
    let n = ct[5] as usize;
    ct[8 + n + 20] ^= 0x55;
    ct
}

/// Defect 2: `DebugMode` and `LogLevel` set by a `SIGHUP` reload apply at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_mode_and_log_level_apply_on_reload() {
    let s = crate::support::plugin::sm2_setup(json!({}));
    let p = tokio::task::block_in_place(|| Serving::start(&s.config, &s.socket, &[]));
    let mut c = crate::support::plugin::v2(&s.socket).await;
    let bad = corrupted(&mut c).await;
    assert!(
        crate::support::plugin::v2_decrypt(&mut c, &bad)
            .await
            .is_err()
    );
    tokio::task::block_in_place(|| p.wait_for("Decrypt failed", 1));
    assert!(
        !p.logs().contains("unwrap failed"),
        "no debug lines yet:\n{}",
        p.logs()
    );

    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.config).unwrap()).unwrap();
    config["DebugMode"] = json!(true);
    crate::support::plugin::write_private(&s.config, config.to_string());
    p.hup();
    tokio::task::block_in_place(|| p.wait_for("reloaded", 1));
    assert!(p.logs().contains("log level changed"), "{}", p.logs());
    assert!(
        crate::support::plugin::v2_decrypt(&mut c, &bad)
            .await
            .is_err()
    );
    tokio::task::block_in_place(|| p.wait_for("unwrap failed", 1));

    // LogLevel wins over DebugMode: warn drops the info lines, reloads included.
    config["LogLevel"] = json!("warn");
    crate::support::plugin::write_private(&s.config, config.to_string());
    p.hup();
    tokio::task::block_in_place(|| p.wait_for("log level changed", 2));
    let before = p.logs().len();
    // Rotate to the other development key: the reload is seen in Status, and not logged at warn.
    let previous = copy_key(s.dir.path(), "dev-sm2-key-previous.pem");
    let old = config["Sm2PrivateKeyFile"].clone();
    config["Sm2PrivateKeyFile"] = json!(previous);
    config["PreviousKeys"] = json!([{ "Sm2PrivateKeyFile": old }]);
    crate::support::plugin::write_private(&s.config, config.to_string());
    p.hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = c
            .status(gm_kms_plugin::proto::v2::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.key_id == "sm2-bfed59c3470d40da" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rotation:\n{}",
            p.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        crate::support::plugin::v2_decrypt(&mut c, &bad)
            .await
            .is_err()
    );
    let after = &p.logs()[before..];
    assert!(
        !after.contains("INFO") && !after.contains("DEBUG"),
        "{after}"
    );
}

/// Defect 8: JSON logs write `keys` as an array; serving with the public development key warns; failed
/// Decrypts are logged at INFO, one line per kind at first, with no ciphertext in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_dev_key_warning_and_decrypt_failures() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let previous = copy_key(dir.path(), "dev-sm2-key-previous.pem");
    let socket = dir.path().join("kms.sock");
    let config = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "PreviousKeys": [{"Sm2PrivateKeyFile": previous}],
                "GRPCSocketPath": socket, "HealthAddr": ""}),
    );
    let p =
        tokio::task::block_in_place(|| Serving::start(&config, &socket, &["--log-format", "json"]));
    let mut c = crate::support::plugin::v2(&socket).await;
    let bad = corrupted(&mut c).await;
    for _ in 0..3 {
        assert!(
            crate::support::plugin::v2_decrypt(&mut c, b"garbage, not a ciphertext")
                .await
                .is_err()
        );
        assert!(
            crate::support::plugin::v2_decrypt(&mut c, &bad)
                .await
                .is_err()
        );
    }
    tokio::task::block_in_place(|| p.wait_for("Decrypt failed", 2));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = p.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["message"] == "gm-kms-plugin serving KMS v1beta1 and v2")
        .expect("the serving line");
    assert_eq!(
        serving["keys"],
        json!(["sm2-fa4d77b77e3ff144", "sm2-bfed59c3470d40da"]),
        "{serving}"
    );
    for l in &lines {
        assert!(
            l["timestamp"].is_string() && l["level"].is_string() && l["target"].is_string(),
            "{l}"
        );
    }
    let warnings: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .unwrap()
                    .contains("PUBLIC development key")
        })
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one per public key in the keyring:\n{logs}"
    );
    let failures: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "Decrypt failed")
        .collect();
    assert_eq!(failures.len(), 2, "first of each kind only:\n{logs}");
    let kinds: std::collections::BTreeSet<&str> = failures
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["invalid_wrapped_key", "malformed"].into_iter().collect()
    );
    for f in &failures {
        assert_eq!(f["level"], "INFO");
        assert_eq!(f["api"], "v2");
    }
    assert!(!logs.contains("garbage, not a ciphertext"));
}

/// Defect 8: with `CARGO_TARGET_DIR` set, scripts/test.sh and the benchmarks write under it, not into the
/// source tree.
#[test]
fn test_script_and_benches_write_under_the_target_dir() {
    let repo = crate::support::plugin::repo();
    // (Without the option the script would run the whole suite: fail fast instead.)
    let script = std::fs::read_to_string(repo.join("scripts/test.sh")).unwrap();
    assert!(
        script.contains("--print-paths)"),
        "scripts/test.sh has no --print-paths"
    );
    let target = tempfile::tempdir().unwrap();
    let out = Command::new(repo.join("scripts/test.sh"))
        .arg("--print-paths")
        .env("CARGO_TARGET_DIR", target.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v))
        .collect();
    assert_eq!(paths.len(), 3, "{text}");
    let target = target.path().canonicalize().unwrap();
    for p in paths {
        assert!(
            std::path::Path::new(p).starts_with(&target),
            "{p} is not under {}",
            target.display()
        );
    }
    // The benchmarks' reports: under cargo's target directory, whatever it is.
    for bench in ["benches/kms.rs", "benches/reliability.rs"] {
        let src = std::fs::read_to_string(repo.join(bench)).unwrap();
        assert!(
            !src.contains("CARGO_MANIFEST_DIR\")).join(\"target"),
            "{bench} writes into the tree"
        );
        assert!(src.contains("common::report_dir()"), "{bench}");
    }
    let common = std::fs::read_to_string(repo.join("benches/common/mod.rs")).unwrap();
    assert!(
        common.contains("env!(\"CARGO_TARGET_TMPDIR\")"),
        "benches/common/mod.rs"
    );
}
