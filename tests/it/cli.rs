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
