//! Reading what JD Cloud's own plugin wrote (DESIGN §2, legacy form) and the migration of
//! docs/migration-from-jdcloud-plugin.md, through the real binary on its socket against the faithful fake
//! JD Cloud KMS. Remote-call counts come from the fake and are printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gm_kms_plugin::proto::{v1beta1, v2};
use gm_kms_testkit::fake_jdcloud::{FakeJdCloud, Fault};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::plugin::{self, Plugin};

type V1 = v1beta1::key_management_service_client::KeyManagementServiceClient<Channel>;
type V2 = v2::key_management_service_client::KeyManagementServiceClient<Channel>;

/// A 32-byte DEK as kube-apiserver makes them, distinct per `i`.
fn dek(i: usize) -> Vec<u8> {
    let mut d = vec![0xA5; 32];
    d[..8].copy_from_slice(&(i as u64).to_be_bytes());
    d
}

/// JD Cloud's plugin config, unchanged, in `dir`; returns (config, socket).
fn jd_plugin_config(fake: &FakeJdCloud, dir: &Path) -> (PathBuf, PathBuf) {
    let socket = dir.join("kms-plugin.sock");
    let config = dir.join("config.json");
    plugin::write_private(&config, fake.seed_config_json(socket.to_str().unwrap()));
    (config, socket)
}

/// A fake JD Cloud KMS, and the plugin running on JD Cloud's plugin config unchanged (in the returned
/// directory, which must outlive the plugin).
async fn on_jd_plugin_config() -> (FakeJdCloud, tempfile::TempDir, Kms) {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = jd_plugin_config(&fake, dir.path());
    let kms = Kms::start(&config, &socket).await;
    (fake, dir, kms)
}

/// The fake's key as a config entry (JD Cloud's plugin fields, no socket), plus `extra` fields.
fn jd_key(fake: &FakeJdCloud, extra: Value) -> Value {
    let mut key: Value = serde_json::from_str(&fake.seed_config_json("/unused")).unwrap();
    let fields = key.as_object_mut().unwrap();
    fields.remove("GRPCSocketPath");
    fields.extend(extra.as_object().unwrap().clone());
    key
}

/// An `sm2` config on the dev key (copied 0600 into `dir`), with `fields` added; returns (config, socket).
fn sm2_config(dir: &Path, fields: Value) -> (PathBuf, PathBuf) {
    let key = plugin::copy_key(dir, "dev-sm2-key.pem");
    let socket = dir.join("kms.sock");
    let mut config = json!({
        "Provider": "sm2",
        "Sm2PrivateKeyFile": key,
        "GRPCSocketPath": socket,
        "HealthAddr": "",
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    (plugin::write_config(dir, &config), socket)
}

/// The plugin process and a client of each API version on its socket.
struct Kms {
    process: Plugin,
    v1: V1,
    v2: V2,
}

impl Kms {
    /// Starts the binary and waits until v2 Status says healthy (the start-up round trip, which calls a
    /// remote primary, is over before a test resets the fake's counters).
    async fn start(config: &Path, socket: &Path) -> Kms {
        let process = tokio::task::block_in_place(|| Plugin::start(config, socket));
        let mut kms = Kms {
            process,
            v1: plugin::v1(socket).await,
            v2: plugin::v2(socket).await,
        };
        for _ in 0..300 {
            let status = kms.v2.status(v2::StatusRequest {}).await.unwrap();
            if status.into_inner().healthz == "ok" {
                return kms;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("plugin never became healthy:\n{}", kms.process.logs());
    }

    async fn read_v1(&mut self, cipher: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let request = v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: cipher.to_vec(),
        };
        Ok(self.v1.decrypt(request).await?.into_inner().plain)
    }

    /// v2 Decrypt with kube-apiserver's 3 s deadline.
    async fn read_v2(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let mut request = tonic::Request::new(v2::DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            uid: "legacy-test".into(),
            key_id: "whatever kube-apiserver stored".into(),
            annotations: Default::default(),
        });
        request.set_timeout(Duration::from_secs(3));
        Ok(self.v2.decrypt(request).await?.into_inner().plaintext)
    }

    /// Reads `ct` through v2, then v1; both must give `want`.
    async fn read_both(&mut self, ct: &[u8], want: &[u8]) {
        let v2 = self
            .read_v2(ct)
            .await
            .unwrap_or_else(|e| panic!("v2: {e:?}"));
        assert_eq!(v2, want, "v2");
        let v1 = self
            .read_v1(ct)
            .await
            .unwrap_or_else(|e| panic!("v1: {e:?}"));
        assert_eq!(v1, want, "v1");
    }

    /// Encrypt, alternating v1 and v2 as `i` does; what comes back is always format 1.
    async fn write(&mut self, i: usize, plain: &[u8]) -> Vec<u8> {
        let ct = if i.is_multiple_of(2) {
            let request = v2::EncryptRequest {
                plaintext: plain.to_vec(),
                uid: String::new(),
            };
            self.v2
                .encrypt(request)
                .await
                .unwrap()
                .into_inner()
                .ciphertext
        } else {
            let request = v1beta1::EncryptRequest {
                version: "v1beta1".into(),
                plain: plain.to_vec(),
            };
            self.v1.encrypt(request).await.unwrap().into_inner().cipher
        };
        assert!(ct.starts_with(b"GMK\x01\x01"), "Encrypt writes format 1");
        ct
    }

    /// Reads every stored ciphertext (v1 and v2 alternately) and checks it opens to its DEK.
    async fn read_all(&mut self, stored: &[(Vec<u8>, Vec<u8>)]) {
        for (i, (dek, ct)) in stored.iter().enumerate() {
            let got = if i.is_multiple_of(2) {
                self.read_v2(ct).await
            } else {
                self.read_v1(ct).await
            };
            assert_eq!(
                &got.unwrap_or_else(|e| panic!("ciphertext {i}: {e:?}")),
                dek
            );
        }
    }

    /// What kube-apiserver does for `kubectl replace` of every Secret: decrypt each stored ciphertext and
    /// encrypt the plaintext again.
    async fn rewrite(&mut self, stored: &mut [(Vec<u8>, Vec<u8>)]) {
        for (i, (dek, ct)) in stored.iter_mut().enumerate() {
            let plain = self.read_v2(ct).await.unwrap();
            assert_eq!(&plain, dek);
            *ct = self.write(i, &plain).await;
        }
    }

    fn stop(self) {
        assert_eq!(self.process.stop().code(), Some(0));
    }
}

fn kek_of(ct: &[u8]) -> String {
    gm_kms_plugin::ciphertext::parse(ct)
        .unwrap()
        .kek_id
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jd_plugin_ciphertexts_decrypt_through_v1_and_v2_with_the_jd_config_unchanged() {
    let (fake, _dir, mut kms) = on_jd_plugin_config().await;
    let (a, b) = (
        fake.legacy_ciphertext(&dek(1)),
        fake.legacy_ciphertext(&dek(2)),
    );
    fake.reset_counts();
    kms.read_both(&a, &dek(1)).await;
    kms.read_both(&b, &dek(2)).await;
    let counts = fake.counts();
    println!("legacy, JD plugin config: 4 reads of 2 legacy ciphertexts (v1 and v2): {counts:?}");
    assert_eq!((counts.decrypt, counts.total()), (2, 2));

    // New writes are format 1 under the same JD Cloud key, through both APIs.
    for i in 0..2 {
        let ct = kms.write(i, b"new secret").await;
        assert_eq!(kek_of(&ct), format!("jdcloud-{}", fake.key_id()));
        assert_eq!(kms.read_v1(&ct).await.unwrap(), b"new secret");
    }
    let logs = kms.process.logs();
    assert!(
        logs.contains("(1 since start)"),
        "the first legacy read is logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jd_plugin_ciphertexts_decrypt_through_an_sm2_config_with_the_jd_key_in_previous_keys() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let previous = jd_key(&fake, json!({"LegacyCiphertexts": true}));
    let (config, socket) = sm2_config(dir.path(), json!({"PreviousKeys": [previous]}));
    let mut kms = Kms::start(&config, &socket).await;
    let old = fake.legacy_ciphertext(&dek(7));
    fake.reset_counts();
    kms.read_both(&old, &dek(7)).await;
    let counts = fake.counts();
    println!("legacy, sm2 primary + JD key in PreviousKeys: 2 reads: {counts:?}");
    assert_eq!((counts.decrypt, counts.total()), (1, 1));
    let ct = kms.write(0, &dek(8)).await;
    assert!(
        kek_of(&ct).starts_with("sm2-"),
        "new writes go to the sm2 primary"
    );
    assert_eq!(fake.counts().total(), 1, "sealing under sm2 calls nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_legacy_reads_jd_plugin_ciphertexts_are_invalid_argument_with_zero_remote_calls() {
    let fake = FakeJdCloud::start().await;
    let old = fake.legacy_ciphertext(&dek(3));
    let explicit = tempfile::tempdir().unwrap();
    let (jd_config, jd_socket) = jd_plugin_config(&fake, explicit.path());
    let mut config: Value = serde_json::from_slice(&std::fs::read(&jd_config).unwrap()).unwrap();
    config["Provider"] = json!("jdcloud");
    std::fs::write(&jd_config, config.to_string()).unwrap();
    let sm2 = tempfile::tempdir().unwrap();
    let previous = jd_key(&fake, json!({}));
    let sm2_setup = sm2_config(sm2.path(), json!({"PreviousKeys": [previous]}));

    for (what, (config, socket)) in [
        ("explicit Provider jdcloud", (jd_config, jd_socket)),
        ("sm2 + JD key in PreviousKeys", sm2_setup),
    ] {
        let mut kms = Kms::start(&config, &socket).await;
        fake.reset_counts();
        let e = kms.read_v2(&old).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        let e = kms.read_v1(&old).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        let counts = fake.counts();
        println!(
            "legacy off ({what}): 2 reads of a legacy ciphertext made {} remote calls",
            counts.total()
        );
        assert_eq!(counts.total(), 0, "{what}: {counts:?}");
        kms.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_blob_beginning_with_gmk_still_decrypts() {
    let fake = FakeJdCloud::start().await;
    // JD Cloud's plugin config: format 1 fails to parse, or names a key not in the ring.
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = jd_plugin_config(&fake, dir.path());
    let mut kms = Kms::start(&config, &socket).await;
    let cases: [(&[u8], &str); 3] = [
        (b"GMK", "magic, then no format-1 version"),
        (b"GMK\x01\x01\x00", "a format-1 start with an empty key id"),
        (
            b"GMK\x01\x01\x01z\x00\x10",
            "a format-1 header naming a key not in the ring",
        ),
    ];
    fake.reset_counts();
    for (i, (prefix, why)) in cases.iter().enumerate() {
        let blob = fake.legacy_ciphertext_with_prefix(&dek(10 + i), prefix);
        assert!(blob.starts_with(b"GMK"));
        println!("legacy blob beginning with GMK: {why}");
        kms.read_both(&blob, &dek(10 + i)).await;
    }
    let jd_calls = fake.counts().decrypt;
    kms.stop();

    // An sm2 config whose key id is `x`: the blob parses as format 1 all the way, and SM2 rejects its
    // "wrapped key" before the legacy try.
    let dir = tempfile::tempdir().unwrap();
    let previous = jd_key(&fake, json!({"LegacyCiphertexts": true}));
    let (config, socket) = sm2_config(
        dir.path(),
        json!({"Sm2KeyId": "x", "PreviousKeys": [previous]}),
    );
    let mut kms = Kms::start(&config, &socket).await;
    let blob = fake.legacy_ciphertext_with_prefix(&dek(20), b"GMK\x01\x01\x01x\x00\x10");
    let parsed = gm_kms_plugin::ciphertext::parse(&blob).expect("parses as format 1");
    assert_eq!(parsed.kek_id, "x");
    fake.reset_counts();
    kms.read_both(&blob, &dek(20)).await;
    let sm2_calls = fake.counts().decrypt;
    println!(
        "legacy blobs beginning with GMK: 3 blobs read twice each made {jd_calls} remote Decrypt calls \
         (JD config); 1 parsing as format 1 read twice made {sm2_calls} (sm2 config)"
    );
    assert_eq!((jd_calls, sm2_calls), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_rejected_with_at_most_one_remote_call_and_an_outage_is_unavailable() {
    let (fake, _dir, mut kms) = on_jd_plugin_config().await;
    let mut tampered_new = kms.write(0, &dek(30)).await;
    *tampered_new.last_mut().unwrap() ^= 1;
    let mut tampered_old = fake.legacy_ciphertext(&dek(31));
    *tampered_old.last_mut().unwrap() ^= 1;
    let garbage: [(&str, Vec<u8>); 7] = [
        ("one byte", b"x".to_vec()),
        ("text", b"definitely not a ciphertext".to_vec()),
        ("binary", (0..=255).collect()),
        ("GMK then junk", b"GMK\x01\x01\x05junk".to_vec()),
        ("tampered format 1", tampered_new),
        ("tampered legacy blob", tampered_old),
        ("60 KiB", vec![0x42; 60 * 1024]),
    ];
    for (what, bytes) in &garbage {
        fake.reset_counts();
        let e = match kms.read_v1(bytes).await {
            Ok(plain) => panic!("{what}: Decrypt answered {} bytes", plain.len()),
            Err(e) => e,
        };
        let calls = fake.counts().total();
        println!(
            "garbage {what:?}: {:?} after {calls} remote call(s)",
            e.code()
        );
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(calls <= 1, "{what}: {calls} remote calls");
    }

    // A remote that answers with nothing usable, or not at all: Unavailable, never a plaintext.
    for (i, fault) in [Fault::EmptyValue, Fault::EmptyResult, Fault::GarbageJson]
        .into_iter()
        .enumerate()
    {
        let old = fake.legacy_ciphertext(&dek(40 + i));
        fake.set_fault(fault);
        let e = kms.read_v2(&old).await.unwrap_err();
        println!("legacy read under {fault:?}: {:?}", e.code());
        assert_eq!(e.code(), Code::Unavailable, "{fault:?}: {e:?}");
        fake.clear_fault();
        assert_eq!(kms.read_v2(&old).await.unwrap(), dek(40 + i), "not cached");
    }
    let old = fake.legacy_ciphertext(&dek(50));
    let gmk_old = fake.legacy_ciphertext_with_prefix(&dek(51), b"GMK\x01\x01");
    fake.set_down(true).await;
    for (what, blob) in [("legacy", &old), ("legacy beginning with GMK", &gmk_old)] {
        let t = Instant::now();
        let e = kms.read_v2(blob).await.unwrap_err();
        println!(
            "{what} read with JD Cloud down: {:?} after {} ms",
            e.code(),
            t.elapsed().as_millis()
        );
        assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
        let e = kms.read_v1(blob).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
    }
    fake.set_down(false).await;
    assert_eq!(kms.read_v2(&old).await.unwrap(), dek(50));
    assert_eq!(kms.read_v1(&gmk_old).await.unwrap(), dek(51));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reads_of_one_legacy_blob_make_one_remote_call() {
    let (fake, _dir, mut kms) = on_jd_plugin_config().await;
    let old = fake.legacy_ciphertext(&dek(60));
    fake.reset_counts();
    // Slow answers, so the first 500 reads all miss the cache together.
    fake.set_delay(Duration::from_millis(200));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = plugin::v2(&kms.process.socket).await;
        for _ in 0..50 {
            let (mut c, old) = (c.clone(), old.clone());
            tasks.push(tokio::spawn(async move {
                let request = v2::DecryptRequest {
                    ciphertext: old,
                    ..Default::default()
                };
                c.decrypt(request).await.map(|r| r.into_inner().plaintext)
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), dek(60));
    }
    fake.set_delay(Duration::ZERO);
    for i in 0..500usize {
        let got = if i.is_multiple_of(2) {
            kms.read_v2(&old).await
        } else {
            kms.read_v1(&old).await
        };
        assert_eq!(got.unwrap(), dek(60));
    }
    let counts = fake.counts();
    println!(
        "legacy: 1000 reads of one legacy ciphertext (500 concurrent, 500 in sequence) made {} remote Decrypt calls",
        counts.decrypt
    );
    assert_eq!((counts.decrypt, counts.total()), (1, 1), "{counts:?}");
}

/// docs/migration-from-jdcloud-plugin.md, steps 1 to 3, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_the_jd_plugin_to_offline_sm2_end_to_end() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    // What etcd holds after years of JD Cloud's plugin: its ciphertexts, one per Secret.
    let originals: Vec<(Vec<u8>, Vec<u8>)> = (0..20)
        .map(|i| (dek(100 + i), fake.legacy_ciphertext(&dek(100 + i))))
        .collect();
    let mut stored = originals.clone();
    let jd_kek = format!("jdcloud-{}", fake.key_id());

    // Step 1: our binary, JD Cloud's plugin config file unchanged.
    let (config, socket) = jd_plugin_config(&fake, dir.path());
    let mut kms = Kms::start(&config, &socket).await;
    fake.reset_counts();
    kms.read_all(&stored).await;
    let step1_reads = fake.counts().decrypt;
    for i in 0..10 {
        let ct = kms.write(i, &dek(200 + i)).await;
        assert_eq!(kek_of(&ct), jd_kek);
        stored.push((dek(200 + i), ct));
    }
    let logs = kms.process.logs();
    assert!(
        logs.contains("still being read"),
        "legacy reads are logged:\n{logs}"
    );

    // Step 2: rewrite every Secret; nothing in legacy form is left.
    fake.reset_counts();
    kms.rewrite(&mut stored).await;
    let step2 = fake.counts();
    assert!(stored.iter().all(|(_, ct)| kek_of(ct) == jd_kek));
    kms.stop();

    // Step 3a: a new sm2 primary, the JD key in PreviousKeys with legacy reads on: everything reads,
    // the untouched originals too.
    let previous = jd_key(&fake, json!({"LegacyCiphertexts": true}));
    let sm2_dir = tempfile::tempdir().unwrap();
    let (config, socket) = sm2_config(sm2_dir.path(), json!({"PreviousKeys": [previous]}));
    let mut kms = Kms::start(&config, &socket).await;
    fake.reset_counts();
    kms.read_all(&stored).await;
    kms.read_all(&originals).await;
    let step3_reads = fake.counts().decrypt;
    // Step 3b: rewrite again: everything moves to the sm2 key.
    kms.rewrite(&mut stored).await;
    assert!(stored.iter().all(|(_, ct)| kek_of(ct).starts_with("sm2-")));
    kms.stop();

    // Step 3c: remove the JD key; with JD Cloud unreachable, everything reads, fully offline.
    let (config, socket) = sm2_config(sm2_dir.path(), json!({}));
    fake.set_down(true).await;
    fake.reset_counts();
    let mut kms = Kms::start(&config, &socket).await;
    kms.read_all(&stored).await;
    let step3c = fake.counts();
    assert_eq!(step3c.total(), 0, "{step3c:?}");
    let e = kms.read_v2(&originals[0].1).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "a legacy original: {e:?}");
    assert!(!kms.process.logs().contains("still being read"));
    println!(
        "migration: step 1 read 20 legacy ciphertexts with {step1_reads} remote Decrypt calls; step 2 \
         rewrote 30 with {} Decrypt + {} Encrypt calls; step 3 read 30 + 20 with {step3_reads} Decrypt \
         calls; offline: 30 reads, {} calls",
        step2.decrypt,
        step2.encrypt,
        step3c.total()
    );
    assert_eq!(step1_reads, 20);
    kms.stop();
}
