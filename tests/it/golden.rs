//! Golden vectors: ciphertexts of format 1 written by released builds, with the key that made them. They
//! must decrypt forever; a change that breaks one breaks every cluster that stored it.

use std::process::Command;

use serde_json::json;

use crate::support::plugin::{binary, copy_key, repo, write_config};

#[derive(serde::Deserialize)]
struct Golden {
    key: String,
    plaintext_hex: String,
    ciphertext_hex: String,
}

#[test]
fn format_1_golden_ciphertexts_decrypt() {
    let text = std::fs::read_to_string(repo().join("tests/golden/format1.json")).unwrap();
    let vectors: Vec<Golden> = serde_json::from_str(&text).unwrap();
    assert!(vectors.len() >= 3);
    let dir = tempfile::tempdir().unwrap();
    for v in vectors {
        let key = copy_key(dir.path(), &v.key);
        let config = write_config(
            dir.path(),
            &json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}),
        );
        let ct = hex::decode(&v.ciphertext_hex).unwrap();
        // The layout itself is pinned too.
        let parsed = gm_kms_plugin::ciphertext::parse(&ct).unwrap();
        assert_eq!(&ct[..5], b"GMK\x01\x01");
        assert!(parsed.kek_id.starts_with("sm2-"));
        let mut child = Command::new(binary())
            .args(["decrypt", "-f"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&ct).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(hex::encode(out.stdout), v.plaintext_hex);
        std::fs::remove_file(&key).unwrap();
    }
}
