//! Golden vectors: ciphertexts of format 1 written by released builds, with the key that made them. They
//! must decrypt forever; a change that breaks one breaks every cluster that stored it.

use std::process::Command;

use serde_json::json;

use crate::support::plugin::{binary, copy_key, repo, v2_decrypt, v2_encrypt, write_config};

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

/// Golden ciphertexts of the `jdcloud` provider: format 1 around a data key wrapped by the fake JD Cloud
/// KMS (whose master key is fixed, as a real KMS key is). Regenerate only for a new format version:
/// `GM_KMS_WRITE_GOLDEN=1 scripts/test.sh --test it golden::jdcloud` (then review the diff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdcloud_golden_ciphertexts_decrypt() {
    use gm_kms_testkit::fake_jdcloud::FakeJdCloud;

    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("jd.sock");
    let config = dir.path().join("config.json");
    crate::support::plugin::write_private(&config, fake.seed_config_json(socket.to_str().unwrap()));
    let _p =
        tokio::task::block_in_place(|| crate::support::plugin::Plugin::start(&config, &socket));
    let mut c = crate::support::plugin::v2(&socket).await;
    let path = repo().join("tests/golden/jdcloud.json");
    if std::env::var_os("GM_KMS_WRITE_GOLDEN").is_some() {
        let mut out = Vec::new();
        for pt in [b"ping".to_vec(), (0u8..32).collect::<Vec<u8>>()] {
            let ct = v2_encrypt(&mut c, &pt).await.unwrap().ciphertext;
            out.push(json!({"key_id": fake.key_id(), "plaintext_hex": hex::encode(&pt), "ciphertext_hex": hex::encode(&ct)}));
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    }
    let vectors: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(vectors.len() >= 2);
    for v in vectors {
        assert_eq!(v["key_id"], fake.key_id());
        let ct = hex::decode(v["ciphertext_hex"].as_str().unwrap()).unwrap();
        assert_eq!(&ct[..5], b"GMK\x01\x01");
        let parsed = gm_kms_plugin::ciphertext::parse(&ct).unwrap();
        assert_eq!(parsed.kek_id, format!("jdcloud-{}", fake.key_id()));
        let pt = v2_decrypt(&mut c, &ct).await.unwrap();
        assert_eq!(hex::encode(pt), v["plaintext_hex"].as_str().unwrap());
    }
}
