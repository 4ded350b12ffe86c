//! Both KMS APIs over the real socket with a real tonic client: round trips, limits, bad input, restart,
//! rotation.

use gm_kms_plugin::proto::{v1beta1, v2};
use serde_json::json;
use tonic::Code;

use crate::support::plugin::{
    self, Plugin, copy_key, openssl_key, sm2_setup, v2_decrypt, v2_encrypt, write_config,
};

#[tokio::test]
async fn v1_and_v2_round_trips_and_status() {
    let s = sm2_setup(json!({}));
    let p = Plugin::start(&s.config, &s.socket);
    let mut c1 = plugin::v1(&s.socket).await;
    let mut c2 = plugin::v2(&s.socket).await;

    let v = c1
        .version(v1beta1::VersionRequest {
            version: "v1beta1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, "v1beta1");
    assert_eq!(v.runtime_name, "gm-kms-plugin");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    // kube-apiserver's v1 health check: Encrypt("ping") then Decrypt.
    let ct = c1
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: b"ping".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .cipher;
    assert!(ct.starts_with(b"GMK\x01\x01"));
    let pt = c1
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: ct.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .plain;
    assert_eq!(pt, b"ping");

    // v2 polls Status until healthz is ok (the first key round trip runs in the background).
    let mut status = c2.status(v2::StatusRequest {}).await.unwrap().into_inner();
    for _ in 0..100 {
        if status.healthz == "ok" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = c2.status(v2::StatusRequest {}).await.unwrap().into_inner();
    }
    assert_eq!(status.version, "v2");
    assert_eq!(status.healthz, "ok");
    assert!(status.key_id.starts_with("sm2-") && status.key_id.len() <= 1024);

    let dek = [0x42u8; 32];
    let enc = c2
        .encrypt(v2::EncryptRequest {
            plaintext: dek.to_vec(),
            uid: "uid-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        enc.key_id, status.key_id,
        "Encrypt key_id equals Status key_id"
    );
    assert!(
        enc.ciphertext.len() < 1024,
        "{} bytes",
        enc.ciphertext.len()
    );
    println!(
        "v2 ciphertext of a 32-byte DEK: {} bytes",
        enc.ciphertext.len()
    );
    let dec = c2
        .decrypt(v2::DecryptRequest {
            ciphertext: enc.ciphertext.clone(),
            uid: "uid-2".into(),
            key_id: enc.key_id.clone(),
            annotations: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dec.plaintext, dek);

    // Same format across APIs: what v1 sealed, v2 opens, and back.
    let via_v2 = c2
        .decrypt(v2::DecryptRequest {
            ciphertext: ct,
            uid: "u".into(),
            key_id: String::new(),
            annotations: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_v2.plaintext, b"ping");
    let via_v1 = c1
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: enc.ciphertext,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_v1.plain, dek);
    assert_eq!(p.stop().code(), Some(0));
}

#[tokio::test]
async fn status_version_is_configurable_for_kubernetes_1_27() {
    let s = sm2_setup(json!({"KmsV2Version": "v2beta1"}));
    let _p = Plugin::start(&s.config, &s.socket);
    let st = plugin::v2(&s.socket)
        .await
        .status(v2::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.version, "v2beta1");
}

#[tokio::test]
async fn concurrent_clients() {
    let s = sm2_setup(json!({}));
    let _p = Plugin::start(&s.config, &s.socket);
    let mut tasks = Vec::new();
    for client in 0..8u8 {
        let socket = s.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = plugin::v2(&socket).await;
            for i in 0..50u8 {
                let msg = vec![client, i, 7, 7];
                let ct = v2_encrypt(&mut c, &msg).await.unwrap().ciphertext;
                let pt = v2_decrypt(&mut c, &ct).await.unwrap();
                assert_eq!(pt, msg);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn v2_decrypt_code(
    c: &mut v2::key_management_service_client::KeyManagementServiceClient<
        tonic::transport::Channel,
    >,
    ct: Vec<u8>,
) -> Code {
    match c
        .decrypt(v2::DecryptRequest {
            ciphertext: ct,
            ..Default::default()
        })
        .await
    {
        Ok(r) => panic!(
            "accepted, plaintext {} bytes",
            r.into_inner().plaintext.len()
        ),
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn bad_input_gets_design_codes_and_the_server_keeps_serving() {
    let s = sm2_setup(json!({}));
    let _p = Plugin::start(&s.config, &s.socket);
    let mut c = plugin::v2(&s.socket).await;
    let good = v2_encrypt(&mut c, b"0123456789abcdef0123456789abcdef")
        .await
        .unwrap()
        .ciphertext;

    // Every single-bit flip anywhere is rejected, never answered with a plaintext.
    for byte in 0..good.len() {
        for bit in 0..8 {
            let mut t = good.clone();
            t[byte] ^= 1 << bit;
            let code = v2_decrypt_code(&mut c, t).await;
            // A flip inside kek_id names a key we do not have.
            let n = good[5] as usize;
            let expected = if (6..6 + n).contains(&byte) && code == Code::FailedPrecondition {
                Code::FailedPrecondition
            } else {
                Code::InvalidArgument
            };
            assert_eq!(code, expected, "flip of bit {bit} in byte {byte}");
        }
    }
    // Truncations and empty input.
    for len in [0, 1, 3, 5, 10, 30, good.len() - 17, good.len() - 1] {
        assert_eq!(
            v2_decrypt_code(&mut c, good[..len].to_vec()).await,
            Code::InvalidArgument,
            "len {len}"
        );
    }
    // Random garbage, with and without the magic.
    let mut g = vec![0u8; 300];
    getrandom::fill(&mut g).unwrap();
    assert_eq!(
        v2_decrypt_code(&mut c, g.clone()).await,
        Code::InvalidArgument
    );
    g[..5].copy_from_slice(b"GMK\x01\x01");
    assert!(matches!(
        v2_decrypt_code(&mut c, g).await,
        Code::InvalidArgument | Code::FailedPrecondition
    ));
    // A well-formed ciphertext under a key this plugin does not have.
    let mut other = good[..5].to_vec();
    other.push(7);
    other.extend_from_slice(b"sm2-xyz");
    other.extend_from_slice(&good[6 + good[5] as usize..]);
    assert_eq!(
        v2_decrypt_code(&mut c, other).await,
        Code::FailedPrecondition
    );
    // Empty plaintext.
    let e = c
        .encrypt(v2::EncryptRequest {
            plaintext: vec![],
            uid: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A message over the 64 KiB message cap (src/server.rs): the gRPC layer refuses it before any handler
    // runs (tonic says OutOfRange where grpc-go says ResourceExhausted; either way kube-apiserver sees a
    // failed call).
    let e = c
        .encrypt(v2::EncryptRequest {
            plaintext: vec![1; 4 * 1024 * 1024 + 1],
            uid: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    // A v1 plaintext just under the limit works (v1 has no 1 KiB ciphertext cap, v2 refuses it).
    let mut c1 = plugin::v1(&s.socket).await;
    let big = vec![9u8; 60_000];
    let ct = c1
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: big.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .cipher;
    assert_eq!(
        c1.decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: ct
        })
        .await
        .unwrap()
        .into_inner()
        .plain,
        big
    );
    let e = c
        .encrypt(v2::EncryptRequest {
            plaintext: vec![1; 2000],
            uid: String::new(),
        })
        .await
        .unwrap_err();
    // The plaintext is the caller's input: InvalidArgument naming the limit, never Internal (DESIGN §6).
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "over the v2 1 KiB ciphertext limit: {e:?}"
    );
    assert!(
        e.message().contains("1024-byte limit") && e.message().contains("2000 bytes"),
        "{e:?}"
    );
    // v1 with a wrong API version string.
    let e = c1
        .encrypt(v1beta1::EncryptRequest {
            version: "v9".into(),
            plain: b"x".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Still serving.
    let again = v2_decrypt(&mut c, &good).await.unwrap();
    assert_eq!(again, b"0123456789abcdef0123456789abcdef");
}

#[tokio::test]
async fn restart_decrypts_what_the_previous_process_wrote() {
    let s = sm2_setup(json!({}));
    let p = Plugin::start(&s.config, &s.socket);
    let mut c = plugin::v2(&s.socket).await;
    let ct = v2_encrypt(&mut c, b"survives restarts")
        .await
        .unwrap()
        .ciphertext;
    assert_eq!(p.stop().code(), Some(0));
    assert!(!s.socket.exists(), "socket removed on SIGTERM");
    let p = Plugin::start(&s.config, &s.socket);
    let mut c = plugin::v2(&s.socket).await;
    let pt = v2_decrypt(&mut c, &ct).await.unwrap();
    assert_eq!(pt, b"survives restarts");
    // kill -9 leaves the socket file behind; the next start reclaims it.
    p.kill9();
    assert!(s.socket.exists());
    let _p = Plugin::start(&s.config, &s.socket);
    let mut c = plugin::v2(&s.socket).await;
    let pt = v2_decrypt(&mut c, &ct).await.unwrap();
    assert_eq!(pt, b"survives restarts");
}

#[tokio::test]
async fn rotation_new_primary_old_key_in_previous_keys() {
    let dir = tempfile::tempdir().unwrap();
    let old = copy_key(dir.path(), "dev-sm2-key.pem");
    let new = openssl_key(dir.path(), "new.pem");
    let socket = dir.path().join("kms.sock");
    let config = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": old, "GRPCSocketPath": socket, "HealthAddr": ""}),
    );
    let p = Plugin::start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    let before = v2_encrypt(&mut c, b"old secret").await.unwrap();
    let old_id = before.key_id.clone();

    // Rotate live with SIGHUP: new primary, old key decrypt-only.
    write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": new, "GRPCSocketPath": socket, "HealthAddr": "",
                "PreviousKeys": [{"Sm2PrivateKeyFile": old}]}),
    );
    p.signal("HUP");
    let mut new_id = old_id.clone();
    for _ in 0..200 {
        new_id = c
            .status(v2::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .key_id;
        if new_id != old_id {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_ne!(
        new_id,
        old_id,
        "Status key_id changed after rotation:\n{}",
        p.logs()
    );
    let after = v2_encrypt(&mut c, b"new secret").await.unwrap();
    assert_eq!(after.key_id, new_id);
    for (ct, want) in [
        (before.ciphertext.clone(), &b"old secret"[..]),
        (after.ciphertext.clone(), &b"new secret"[..]),
    ] {
        let pt = v2_decrypt(&mut c, &ct).await.unwrap();
        assert_eq!(pt, want);
    }

    // A bad reload (unknown field) is refused; the running keys stay.
    std::fs::write(&config, br#"{"Sm2PrivateKeyFile": "x.pem", "Bogus": 1}"#).unwrap();
    p.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.key_id, new_id);
    assert!(p.logs().contains("reload refused"), "{}", p.logs());
    let pt = v2_decrypt(&mut c, &before.ciphertext).await.unwrap();
    assert_eq!(pt, b"old secret");
    drop(p);

    // After a restart on the rotated config, both still decrypt; without the old key, old data is refused.
    write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": new, "GRPCSocketPath": socket, "HealthAddr": "",
                "PreviousKeys": [{"Sm2PrivateKeyFile": old}]}),
    );
    let p = Plugin::start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    let pt = v2_decrypt(&mut c, &before.ciphertext).await.unwrap();
    assert_eq!(pt, b"old secret");
    drop(p);
    write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": new, "GRPCSocketPath": socket, "HealthAddr": ""}),
    );
    let _p = Plugin::start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    let e = v2_decrypt(&mut c, &before.ciphertext).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(&old_id), "{}", e.message());
}
