//! The plugin in `jdcloud` mode over its real socket, against the faithful fake JD Cloud KMS (signature
//! checks, nonce replay, fault switches): seed config drop-in, remote-call counts, outages, faults.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gm_kms_plugin::proto::{v1beta1, v2};
use gm_kms_testkit::fake_jdcloud::{FakeJdCloud, Fault};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::plugin::{self, Plugin, V2, v2_decrypt as decrypt, v2_encrypt};

/// JD Cloud's own plugin config as the fake hands it out, plus `extra` fields.
fn seed_config(fake: &FakeJdCloud, dir: &Path, extra: Value) -> (PathBuf, PathBuf) {
    let socket = dir.join("kms-plugin.sock");
    let mut config: Value =
        serde_json::from_str(&fake.seed_config_json(socket.to_str().unwrap())).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let path = dir.join("config.json");
    crate::support::plugin::write_private(&path, config.to_string());
    (path, socket)
}

fn start(config: &Path, socket: &Path) -> Plugin {
    tokio::task::block_in_place(|| Plugin::start(config, socket))
}

async fn wait_healthy(c: &mut V2) {
    for _ in 0..300 {
        if c.status(v2::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .healthz
            == "ok"
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("plugin never became healthy");
}

async fn encrypt(c: &mut V2, plain: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    v2_encrypt(c, plain).await.map(|r| r.ciphertext)
}

/// Runs `total` v2 Encrypts of distinct 32-byte DEKs over `conns` connections; returns (dek, ciphertext).
async fn encrypt_many(socket: &Path, total: usize, conns: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut tasks = Vec::new();
    for t in 0..conns {
        let mut c = plugin::v2(socket).await;
        let n = total / conns + usize::from(t < total % conns);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let mut dek = vec![0u8; 32];
                dek[..8].copy_from_slice(&(t as u32).to_be_bytes().repeat(2));
                dek[8..16].copy_from_slice(&(i as u64).to_be_bytes());
                let ct = encrypt(&mut c, &dek).await.unwrap();
                out.push((dek, ct));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_drop_in_and_100k_encrypts_make_few_remote_calls() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = seed_config(&fake, dir.path(), json!({}));
    let _p = start(&config, &socket);
    let mut c2 = plugin::v2(&socket).await;
    wait_healthy(&mut c2).await;
    let status = c2.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.key_id, format!("jdcloud-{}", fake.key_id()));

    // v1 as JD Cloud's plugin users run it, and v2.
    let mut c1 = plugin::v1(&socket).await;
    let ct = c1
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: b"ping".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .cipher;
    assert!(ct.starts_with(b"GMK\x01\x01"), "new writes are format 1");
    let pt = c1
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: ct,
        })
        .await
        .unwrap()
        .into_inner()
        .plain;
    assert_eq!(pt, b"ping");
    let ct = encrypt(&mut c2, &[5; 32]).await.unwrap();
    assert!(ct.len() < 1024);
    assert_eq!(decrypt(&mut c2, &ct).await.unwrap(), [5; 32]);

    fake.reset_counts();
    let started = Instant::now();
    let sealed = encrypt_many(&socket, 100_000, 16).await;
    let took = started.elapsed();
    let counts = fake.counts();
    // The background health round trip (one Encrypt and one Decrypt a minute) is the only source of
    // Decrypt calls here, so Encrypt calls beyond it are the ones the 100,000 Encrypts caused.
    let probes = counts.decrypt;
    let caused = counts.encrypt.saturating_sub(probes);
    println!(
        "jdcloud: 100000 v2 Encrypts in {:.1} s made {caused} remote calls \
         (plus {probes} health round trips: {} Encrypt, {} Decrypt in all)",
        took.as_secs_f64(),
        counts.encrypt,
        counts.decrypt
    );
    assert!(counts.encrypt >= probes, "{counts:?}");
    assert!(caused <= 2, "{counts:?}");
    assert_eq!(counts.other + counts.describe, 0, "{counts:?}");
    assert_eq!(counts.bad_signature, 0);
    assert_eq!(
        decrypt(&mut c2, &sealed[99_999].1).await.unwrap(),
        sealed[99_999].0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_then_10k_decrypts_under_k_data_keys_make_k_remote_calls() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = seed_config(&fake, dir.path(), json!({"DataKeyMaxUses": 2500}));
    let p = start(&config, &socket);
    let sealed = encrypt_many(&socket, 10_000, 8).await;
    let k = sealed
        .iter()
        .map(|(_, ct)| {
            gm_kms_plugin::ciphertext::parse(ct)
                .unwrap()
                .wrapped_dk
                .to_vec()
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert!(
        (4..=5).contains(&k),
        "10000 encrypts at 2500 uses each: {k} data keys"
    );
    assert_eq!(p.stop().code(), Some(0));

    let _p = start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    wait_healthy(&mut c).await;
    fake.reset_counts();
    // Decrypt everything, 16 connections at once, so misses for one data key race each other.
    let mut tasks = Vec::new();
    for chunk in sealed.chunks(sealed.len() / 16) {
        let chunk = chunk.to_vec();
        let mut c = plugin::v2(&socket).await;
        tasks.push(tokio::spawn(async move {
            for (dek, ct) in chunk {
                assert_eq!(decrypt(&mut c, &ct).await.unwrap(), dek);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = fake.counts();
    println!(
        "jdcloud: after restart, 10000 Decrypts under k={k} data keys made {} remote Decrypt calls",
        counts.decrypt
    );
    assert_eq!(counts.decrypt, k as u64, "{counts:?}");
    assert_eq!(counts.encrypt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_encrypt_and_cached_decrypt_keep_working_uncached_is_unavailable_in_time() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = seed_config(&fake, dir.path(), json!({"KmsTimeoutMs": 500}));
    let p = start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    let old = encrypt(&mut c, b"written before the restart")
        .await
        .unwrap();
    drop(c);
    p.stop();

    let _p = start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    wait_healthy(&mut c).await;
    let fresh = encrypt(&mut c, b"written before the outage").await.unwrap();

    fake.set_down(true).await;
    let during = encrypt(&mut c, b"written during the outage").await.unwrap();
    assert_eq!(
        decrypt(&mut c, &fresh).await.unwrap(),
        b"written before the outage"
    );
    assert_eq!(
        decrypt(&mut c, &during).await.unwrap(),
        b"written during the outage"
    );
    let t = Instant::now();
    let e = decrypt(&mut c, &old).await.unwrap_err();
    println!(
        "uncached Decrypt with JD Cloud down: {:?} after {} ms",
        e.code(),
        t.elapsed().as_millis()
    );
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{e:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(3500),
        "answered after {:?}",
        t.elapsed()
    );

    // Recovery without a restart.
    fake.set_down(false).await;
    assert_eq!(
        decrypt(&mut c, &old).await.unwrap(),
        b"written before the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_gives_a_non_ok_status_never_a_wrong_or_empty_answer() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    // One data key per message, so every ciphertext needs its own remote unwrap.
    let (config, socket) = seed_config(
        &fake,
        dir.path(),
        json!({"KmsTimeoutMs": 400, "DataKeyMaxUses": 1}),
    );
    let p = start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    let faults = [
        Fault::Status500,
        Fault::Status503,
        Fault::Status429,
        Fault::DropConnection,
        Fault::GarbageJson,
        Fault::EmptyResult,
        Fault::EmptyValue,
        Fault::ShortPlaintext,
    ];
    let mut sealed = Vec::new();
    for i in 0..faults.len() + 2 {
        let msg = format!("secret number {i}").into_bytes();
        sealed.push((msg.clone(), encrypt(&mut c, &msg).await.unwrap()));
    }
    drop(c);
    p.stop();
    let _p = start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    wait_healthy(&mut c).await;

    for (fault, (msg, ct)) in faults.iter().zip(&sealed) {
        fake.set_fault(*fault);
        match decrypt(&mut c, ct).await {
            Ok(pt) => panic!("{fault:?}: Decrypt answered {} bytes", pt.len()),
            Err(e) => {
                println!("fault {fault:?}: Decrypt -> {:?}", e.code());
                assert!(
                    matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
                    "{fault:?}: {e:?}"
                );
            }
        }
        // Encrypt under the fault: sealing falls back to the current data key, or fails; whatever it
        // returns must open to the right plaintext once the fault is gone.
        let during = encrypt(&mut c, b"sealed during a fault").await;
        fake.clear_fault();
        assert_eq!(
            &decrypt(&mut c, ct).await.unwrap(),
            msg,
            "{fault:?}: recovery"
        );
        if let Ok(during) = during {
            assert_eq!(
                decrypt(&mut c, &during).await.unwrap(),
                b"sealed during a fault"
            );
        }
    }

    // Slow answers past the caller's deadline: a prompt DeadlineExceeded/Unavailable, never a hang.
    fake.set_delay(Duration::from_secs(5));
    let (msg, ct) = &sealed[faults.len()];
    let t = Instant::now();
    let e = decrypt(&mut c, ct).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{e:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(3500),
        "{:?}",
        t.elapsed()
    );
    fake.set_delay(Duration::ZERO);
    assert_eq!(&decrypt(&mut c, ct).await.unwrap(), msg);

    // A disabled key: refused (not retried as an outage), and `check` reports it.
    fake.set_keys_enabled(false);
    let (_, ct) = &sealed[faults.len() + 1];
    let e = decrypt(&mut c, ct).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(plugin::binary())
            .args(["check", "-f"])
            .arg(&config)
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("disabled"), "{text}");
    assert_eq!(fake.counts().bad_signature, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_key_is_permission_denied() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = seed_config(&fake, dir.path(), json!({"SecretKey": "not-the-secret"}));
    let _p = start(&config, &socket);
    let mut c = plugin::v2(&socket).await;
    let e = encrypt(&mut c, b"x").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(!e.message().contains("not-the-secret"));
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_ne!(st.healthz, "ok");
    assert!(fake.counts().bad_signature >= 1);
}
