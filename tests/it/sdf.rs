//! The `sdf` provider (issue 12) through the real binary and socket, over the soft SDF device of
//! crates/sdf-soft in each profile: round trips, the same key id and ciphertexts as `sm2` with the key's
//! PEM copy, OpenSSL opening what the device sealed, device-call counts, faults, the session pool, and a
//! rotation from a file key to the device by SIGHUP under load.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gm_kms_plugin::proto::{v1beta1, v2};
use serde_json::json;
use tonic::Code;

use crate::support::load::{Load, wait_for_new_key_id};
use crate::support::plugin::Plugin as Proc;
use crate::support::plugin::{self, V2, v2_decrypt, v2_encrypt};
use crate::support::sdf::{self, SoftDevice, check, config, sdf_key, secret_file};

/// The plugin's v2 `Status`.
async fn status(c: &mut V2) -> v2::StatusResponse {
    c.status(v2::StatusRequest {}).await.unwrap().into_inner()
}

/// Waits until v2 `Status` is healthy (the first background round trip done); the primary key id.
async fn healthy(c: &mut V2, p: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(c).await;
        if st.healthz == "ok" {
            return st.key_id;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {}\n{}",
            st.healthz,
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An `sm2` plugin over a PEM copy of the device key (mode 0600), in its own directory.
fn sm2_twin(dev: &SoftDevice, extra: serde_json::Value) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("copy.pem");
    std::fs::copy(dev.key(1), &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (config, socket) = config(
        dir.path(),
        json!({"Provider": "sm2", "Sm2PrivateKeyFile": key}),
        extra,
    );
    let p = sdf::start(&config, &socket, dev);
    (dir, p)
}

/// `count` v2 ciphertexts of distinct 32-byte payloads, sealed by `socket`'s plugin.
async fn seal_many(socket: &std::path::Path, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut c = plugin::v2(socket).await;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let plain: Vec<u8> = (0..32u8)
            .map(|j| j ^ (i as u8) ^ ((i >> 8) as u8))
            .collect();
        let ct = v2_encrypt(&mut c, &plain).await.unwrap().ciphertext;
        out.push((plain, ct));
    }
    out
}

/// The data key of a ciphertext, recovered from its wrapped key with `openssl pkeyutl -decrypt`.
fn openssl_unwrap(key: &std::path::Path, ct: &[u8], dir: &std::path::Path) -> Vec<u8> {
    let parsed = gm_kms_plugin::ciphertext::parse(ct).unwrap();
    let wrapped = dir.join("wrapped.der");
    std::fs::write(&wrapped, parsed.wrapped_dk).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(key)
        .arg("-in")
        .arg(&wrapped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl pkeyutl -decrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The payload of `ct`, opened with a data key recovered outside the plugin.
fn open_with(dk: &[u8], ct: &[u8]) -> Vec<u8> {
    let parsed = gm_kms_plugin::ciphertext::parse(ct).unwrap();
    let dk = gm_kms_plugin::DataKey::from_slice(dk).expect("a 16-byte data key");
    gm_kms_plugin::cipher::for_id(parsed.cipher_id, &dk)
        .unwrap()
        .open(parsed.nonce, parsed.header, parsed.sealed)
        .expect("payload opens with the OpenSSL-recovered data key")
}

async fn profile_round_trips(profile: &'static str) {
    let dev = SoftDevice::new(profile);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, socket) = config(dir.path(), sdf_key(dir.path(), &dev), json!({}));
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c2 = plugin::v2(&socket).await;
    let id = healthy(&mut c2, &p).await;

    // v1: kube-apiserver's health check (Encrypt "ping", then Decrypt).
    let mut c1 = plugin::v1(&socket).await;
    let ct1 = c1
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: b"ping".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .cipher;
    let back = c1
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: ct1.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .plain;
    assert_eq!(back, b"ping");

    // v2.
    let dek = [0x5au8; 32];
    let r = v2_encrypt(&mut c2, &dek).await.unwrap();
    assert_eq!(r.key_id, id);
    assert_eq!(v2_decrypt(&mut c2, &r.ciphertext).await.unwrap(), dek);
    let parsed = gm_kms_plugin::ciphertext::parse(&r.ciphertext).unwrap();
    assert_eq!(parsed.kek_id, id);
    assert_eq!(parsed.wrapped_dk.first(), Some(&0x30), "a DER SEQUENCE");
    assert!(r.ciphertext.len() < 1024);

    // The device did the work: data key from its RNG, wrap and unwrap inside it, under the access right.
    assert!(
        dev.count("SDF_GenerateRandom") >= 1,
        "data keys must come from the device RNG (issue 12): {:?}",
        dev.calls()
    );
    for f in [
        "SDF_OpenDevice",
        "SDF_ExportEncPublicKey_ECC",
        "SDF_ExternalEncrypt_ECC",
        "SDF_GetPrivateKeyAccessRight",
        "SDF_InternalDecrypt_ECC",
    ] {
        assert!(dev.count(f) >= 1, "{f} never called: {:?}", dev.calls());
    }
    assert!(
        dev.calls().iter().all(|l| l.ends_with("rc=0x00000000")),
        "{:?}",
        dev.calls()
    );

    // OpenSSL opens what the device sealed, with the PEM file of the device key.
    for ct in [&ct1, &r.ciphertext] {
        let dk = openssl_unwrap(&dev.key(1), ct, dir.path());
        assert_eq!(dk.len(), 16);
        let expected: &[u8] = if ct == &ct1 { b"ping" } else { &dek };
        assert_eq!(open_with(&dk, ct), expected);
    }

    // The PEM copy in an `sm2` config: the same id, and each plugin opens what the other sealed.
    let (_twin_dir, twin) = sm2_twin(&dev, json!({}));
    let mut t = plugin::v2(&twin.socket).await;
    assert_eq!(status(&mut t).await.key_id, id, "same key, same id");
    assert_eq!(v2_decrypt(&mut t, &r.ciphertext).await.unwrap(), dek);
    let from_file = v2_encrypt(&mut t, b"sealed with the PEM copy")
        .await
        .unwrap();
    assert_eq!(from_file.key_id, id);
    let before = dev.count("SDF_InternalDecrypt_ECC");
    assert_eq!(
        v2_decrypt(&mut c2, &from_file.ciphertext).await.unwrap(),
        b"sealed with the PEM copy"
    );
    assert_eq!(dev.count("SDF_InternalDecrypt_ECC"), before + 1);

    // `check` reports the device, the key index, the profile, and a round trip.
    let (ok, text) = check(&cfg, &dev);
    assert!(ok, "{text}");
    for want in [
        gm_sdf::locate::ISSUER,
        gm_sdf::locate::DEVICE_NAME,
        gm_sdf::locate::SERIAL,
        "key index 1",
        profile,
        &id,
        "round trip: ok",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(twin.stop().success());
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmt0018_2012_round_trips_and_interoperates_with_sm2_and_openssl() {
    profile_round_trips("gmt0018-2012").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmt0018_2023_round_trips_and_interoperates_with_sm2_and_openssl() {
    profile_round_trips("gmt0018-2023").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sansec_round_trips_and_interoperates_with_sm2_and_openssl() {
    profile_round_trips("sansec").await;
}

/// Decrypts every ciphertext with `tasks` concurrent clients; panics on any failure or wrong payload.
async fn decrypt_all(socket: &std::path::Path, cts: Arc<Vec<(Vec<u8>, Vec<u8>)>>, tasks: usize) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let cts = cts.clone();
        let mut c = plugin::v2(socket).await;
        handles.push(tokio::spawn(async move {
            for (plain, ct) in cts.iter().skip(t).step_by(tasks) {
                assert_eq!(&v2_decrypt(&mut c, ct).await.unwrap(), plain);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_then_10000_decrypts_make_one_device_decrypt_per_data_key() {
    const N: usize = 10_000;
    let dev = SoftDevice::new("gmt0018-2012");
    let dir = tempfile::tempdir().unwrap();
    let (cfg, socket) = config(
        dir.path(),
        sdf_key(dir.path(), &dev),
        json!({"DataKeyMaxUses": 2500}),
    );
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;
    healthy(&mut c, &p).await;
    let cts = Arc::new(seal_many(&socket, N).await);
    let k = cts
        .iter()
        .map(|(_, ct)| {
            gm_kms_plugin::ciphertext::parse(ct)
                .unwrap()
                .wrapped_dk
                .to_vec()
        })
        .collect::<HashSet<_>>()
        .len();
    assert!(
        k >= 4,
        "{N} encryptions at 2500 per data key made only {k} keys"
    );
    assert!(p.stop().success());

    // A fresh process: nothing cached. The background health round trip also decrypts in the device (one
    // encrypt and one decrypt each), so probes are subtracted by their encrypts: Decrypt traffic encrypts
    // nothing.
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;
    healthy(&mut c, &p).await;
    let (dec0, enc0) = (
        dev.count("SDF_InternalDecrypt_ECC"),
        dev.count("SDF_ExternalEncrypt_ECC"),
    );
    let started = Instant::now();
    decrypt_all(&socket, cts.clone(), 8).await;
    let took = started.elapsed();
    let decrypts = dev.count("SDF_InternalDecrypt_ECC") - dec0;
    let probes = dev.count("SDF_ExternalEncrypt_ECC") - enc0;
    println!(
        "sdf: {N} Decrypts after a restart under {k} data keys: {decrypts} SDF_InternalDecrypt_ECC calls ({probes} of them health probes), {} ms",
        took.as_millis()
    );
    assert_eq!(decrypts - probes, k, "{:?}", p.logs());
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_communication_failure_is_unavailable_and_the_pool_recovers() {
    let dev = SoftDevice::new("gmt0018-2012");
    let (_twin_dir, twin) = sm2_twin(&dev, json!({"DataKeyMaxUses": 1}));
    let cts = seal_many(&twin.socket, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, socket) = config(dir.path(), sdf_key(dir.path(), &dev), json!({}));
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;
    healthy(&mut c, &p).await;
    let opened = dev.count("SDF_OpenSession");

    dev.set("fault-commfail", "");
    for (_, ct) in &cts[..2] {
        let e = v2_decrypt(&mut c, ct).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("SDR_COMMFAIL"), "{e:?}");
    }
    // The device is back: the broken session was closed and a fresh one serves the call.
    dev.clear("fault-commfail");
    for (plain, ct) in &cts {
        assert_eq!(&v2_decrypt(&mut c, ct).await.unwrap(), plain);
    }
    assert!(
        dev.count("SDF_OpenSession") > opened,
        "no new session after the failure: {:?}",
        dev.calls()
    );
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_length_key_from_the_device_is_a_device_fault() {
    let dev = SoftDevice::new("gmt0018-2012");
    let (_twin_dir, twin) = sm2_twin(&dev, json!({"DataKeyMaxUses": 1}));
    let cts = seal_many(&twin.socket, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, socket) = config(dir.path(), sdf_key(dir.path(), &dev), json!({}));
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;
    healthy(&mut c, &p).await;

    // The device answers success with a key one byte short: its fault, not the caller's bytes.
    dev.set("fault-badlen", "");
    let e = v2_decrypt(&mut c, &cts[0].1).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    dev.clear("fault-badlen");
    for (plain, ct) in &cts {
        assert_eq!(&v2_decrypt(&mut c, ct).await.unwrap(), plain);
    }
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_fails_closed_without_a_retry_storm_until_a_fixed_reload() {
    const DECRYPTS: usize = 50;
    let dev = SoftDevice::new("gmt0018-2012");
    let (_twin_dir, twin) = sm2_twin(&dev, json!({"DataKeyMaxUses": 5}));
    let cts = seal_many(&twin.socket, DECRYPTS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut key = sdf_key(dir.path(), &dev);
    let pin = secret_file(dir.path(), "pin", "not-the-pin\n");
    key["SdfPinFile"] = json!(pin);
    let (cfg, socket) = config(dir.path(), key, json!({}));
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;

    for (_, ct) in &cts {
        let e = v2_decrypt(&mut c, ct).await.unwrap_err();
        assert!(
            matches!(e.code(), Code::PermissionDenied | Code::FailedPrecondition),
            "{e:?}"
        );
    }
    let e = v2_encrypt(&mut c, b"x").await.unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::FailedPrecondition),
        "{e:?}"
    );
    let tries = dev.count("SDF_GetPrivateKeyAccessRight");
    let sessions = dev.count("SDF_OpenSession");
    println!(
        "sdf: wrong PIN, {DECRYPTS} Decrypts: {tries} SDF_GetPrivateKeyAccessRight, {sessions} SDF_OpenSession, {} SDF_InternalDecrypt_ECC",
        dev.count("SDF_InternalDecrypt_ECC")
    );
    assert_eq!(tries, 1, "{:?}", dev.calls());
    assert!(tries <= sessions);
    assert_eq!(dev.count("SDF_InternalDecrypt_ECC"), 0);
    assert!(
        !dev.dir.path().join("locked-1").exists(),
        "the device locked the key"
    );
    // Health says why (the background round trip hit the refusal, or a request did first).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(&mut c).await;
        if st.healthz.contains("access password") {
            break;
        }
        assert!(Instant::now() < deadline, "healthz: {}", st.healthz);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Fixing the PIN file and reloading tries once more, and works.
    secret_file(dir.path(), "pin", &format!("{}\n", sdf::PIN));
    p.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (plain, ct) = &cts[0];
    loop {
        match v2_decrypt(&mut c, ct).await {
            Ok(back) => {
                assert_eq!(&back, plain);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "{e:?}\n{}", p.logs()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dev.count("SDF_GetPrivateKeyAccessRight"), 2);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_device_cannot_hold_a_caller_past_its_deadline() {
    let dev = SoftDevice::new("sansec");
    let (_twin_dir, twin) = sm2_twin(&dev, json!({"DataKeyMaxUses": 1}));
    let cts = seal_many(&twin.socket, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, socket) = config(dir.path(), sdf_key(dir.path(), &dev), json!({}));
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;
    healthy(&mut c, &p).await;

    dev.set("fault-slow-ms", "3000");
    let deadline = Duration::from_millis(500);
    // The server's own answer (a client with a timer of its own would give up first).
    let (code, took) = sdf::v2_decrypt_server_deadline(&socket, &cts[0].1, deadline).await;
    println!(
        "sdf: 3000 ms device, 500 ms deadline: grpc-status {code} after {} ms",
        took.as_millis()
    );
    assert_eq!(code, "4", "DEADLINE_EXCEEDED");
    assert!(
        took < deadline + Duration::from_millis(300),
        "answered after {took:?}"
    );
    // And kube-apiserver's view through a real client: the call ends at its deadline.
    let mut req = tonic::Request::new(v2::DecryptRequest {
        ciphertext: cts[1].1.clone(),
        ..Default::default()
    });
    req.set_timeout(deadline);
    let started = Instant::now();
    let e = c.decrypt(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    assert!(started.elapsed() < deadline + Duration::from_millis(300));

    dev.clear("fault-slow-ms");
    let (plain, ct) = &cts[2];
    assert_eq!(&v2_decrypt(&mut c, ct).await.unwrap(), plain);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_cold_decrypts_share_four_sessions() {
    const N: usize = 16;
    let dev = SoftDevice::new("gmt0018-2023");
    let (_twin_dir, twin) = sm2_twin(&dev, json!({"DataKeyMaxUses": 1}));
    let cts = Arc::new(seal_many(&twin.socket, N).await);
    let dir = tempfile::tempdir().unwrap();
    let mut key = sdf_key(dir.path(), &dev);
    key["SdfSessions"] = json!(4);
    let (cfg, socket) = config(dir.path(), key, json!({}));
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;
    healthy(&mut c, &p).await;
    let dec0 = dev.count("SDF_InternalDecrypt_ECC");

    // Each device call takes 100 ms, so the 16 calls overlap and queue for the 4 sessions.
    dev.set("fault-slow-ms", "100");
    let started = Instant::now();
    decrypt_all(&socket, cts.clone(), N).await;
    let took = started.elapsed();
    dev.clear("fault-slow-ms");
    let decrypts = dev.count("SDF_InternalDecrypt_ECC") - dec0;
    let sessions = dev.count("SDF_OpenSession");
    println!(
        "sdf: {N} concurrent cold Decrypts, SdfSessions 4: {decrypts} SDF_InternalDecrypt_ECC, {sessions} sessions ever opened, {} ms",
        took.as_millis()
    );
    assert_eq!(decrypts, N);
    assert!(sessions <= 4, "{sessions} sessions: {:?}", dev.calls());
    assert!(
        dev.count("SDF_GetPrivateKeyAccessRight") <= sessions,
        "{:?}",
        dev.calls()
    );
    // 16 calls of 100 ms through 4 sessions take at least 4 rounds.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_from_a_file_key_to_the_device_under_load_by_sighup() {
    let dev = SoftDevice::new("gmt0018-2012");
    let dir = tempfile::tempdir().unwrap();
    let file_key = plugin::openssl_key(dir.path(), "file-key.pem");
    let (cfg, socket) = config(
        dir.path(),
        json!({"Provider": "sm2", "Sm2PrivateKeyFile": file_key}),
        json!({"DataKeyMaxUses": 50}),
    );
    let p = sdf::start(&cfg, &socket, &dev);
    let mut c = plugin::v2(&socket).await;
    let old_id = healthy(&mut c, &p).await;
    let early = v2_encrypt(&mut c, b"sealed with the file key")
        .await
        .unwrap();

    let load = Load::start(&socket, 4).await;
    load.wait_ops(100).await;

    // The device key becomes primary, the file key decrypt-only; SIGHUP; the socket never drops.
    config(
        dir.path(),
        sdf_key(dir.path(), &dev),
        json!({"DataKeyMaxUses": 50, "PreviousKeys": [{"Provider": "sm2", "Sm2PrivateKeyFile": file_key}]}),
    );
    p.signal("HUP");
    let new_id = wait_for_new_key_id(&mut c, &old_id, || p.logs()).await;
    load.wait_ops(load.ops() + 300).await;
    let all_ids = load.finish(|| p.logs()).await;
    assert!(all_ids.contains(&new_id), "{all_ids:?}");
    assert!(
        all_ids.iter().all(|id| *id == old_id || *id == new_id),
        "{all_ids:?}"
    );
    // The new id is the device key's, as an sm2 config of its PEM copy derives it.
    let (_twin_dir, twin) = sm2_twin(&dev, json!({}));
    let mut t = plugin::v2(&twin.socket).await;
    assert_eq!(status(&mut t).await.key_id, new_id);
    assert_eq!(v2_encrypt(&mut c, b"after").await.unwrap().key_id, new_id);
    assert_eq!(
        v2_decrypt(&mut c, &early.ciphertext).await.unwrap(),
        b"sealed with the file key"
    );
    // 300 operations at 50 per data key after the rotation: several device wraps, all successful.
    assert!(
        dev.count("SDF_ExternalEncrypt_ECC") >= 4,
        "{:?}",
        dev.calls()
    );
    assert!(p.logs().contains("reloaded"), "{}", p.logs());
    assert!(twin.stop().success());
    assert!(p.stop().success());
}
