//! The provider against the fake JD Cloud KMS (a real HTTP server on 127.0.0.1).

use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::SignVersion;
use gm_kms_testkit::fake_jdcloud::{Counts, FAKE_KEY_ID, FAKE_SECRET_KEY, FakeJdCloud, Fault};

/// The provider for `spec`, blind to the process's proxy variables (the fake is on 127.0.0.1).
fn provider(spec: &JdCloudSpec) -> JdCloudProvider {
    JdCloudProvider::with_env(spec, RetryPolicy::for_timeout(spec.timeout), &|_| None)
        .expect("provider builds")
}

/// A provider config for key `key_id` of the fake: schema `http`, signing v3, legacy reads on.
fn spec_for(fake: &FakeJdCloud, key_id: &str, timeout: Duration) -> JdCloudSpec {
    JdCloudSpec {
        access_key: crate::secret::SecretString::new(fake.access_key().to_string()),
        secret_key: crate::secret::SecretString::new(fake.secret_key().to_string()),
        endpoint: fake.endpoint(),
        key_id: key_id.to_string(),
        schema: "http".into(),
        timeout,
        sign_version: SignVersion::V3,
        legacy_ciphertexts: true,
        network: Default::default(),
    }
}

/// [`spec_for`] the key the fake started with, 2 s timeout.
fn fake_spec(fake: &FakeJdCloud) -> JdCloudSpec {
    spec_for(fake, fake.key_id(), Duration::from_millis(2000))
}

fn short(fake: &FakeJdCloud, timeout_ms: u64) -> JdCloudSpec {
    spec_for(fake, FAKE_KEY_ID, Duration::from_millis(timeout_ms))
}

fn dk(b: u8) -> DataKey {
    DataKey::from_bytes([b; DATA_KEY_LEN])
}

fn kind(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Unavailable(_) => "Unavailable",
        ProviderError::Refused(_) => "Refused",
        ProviderError::PermissionDenied(_) => "PermissionDenied",
        ProviderError::InvalidWrappedKey(_) => "InvalidWrappedKey",
        ProviderError::Config(_) => "Config",
    }
}

#[tokio::test]
async fn wrap_unwrap_round_trip_with_both_sign_versions() {
    let fake = FakeJdCloud::start().await;
    for version in [SignVersion::V3, SignVersion::V2] {
        fake.reset_counts();
        let mut spec = fake_spec(&fake);
        spec.sign_version = version;
        let p = provider(&spec);
        assert_eq!(p.kek_id(), format!("jdcloud-{FAKE_KEY_ID}"));
        assert_eq!(p.kind(), "jdcloud");
        let key = DataKey::generate().unwrap();
        let wrapped = p.wrap(&key).await.expect("wrap");
        assert!(!wrapped.is_empty() && wrapped.len() <= 4096);
        assert!(
            wrapped
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))
        );
        let back = p.unwrap(&wrapped).await.expect("unwrap");
        assert_eq!(back, key, "{version:?}");
        // Two wraps of one key differ (fresh nonce in the KMS).
        assert_ne!(p.wrap(&key).await.unwrap(), wrapped);
        let c = fake.counts();
        assert_eq!(
            (c.encrypt, c.decrypt, c.bad_signature, c.replayed_nonce),
            (2, 1, 0, 0),
            "{version:?} {c:?}"
        );
    }
}

#[tokio::test]
async fn describe_reports_the_key_state() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&fake_spec(&fake));
    // The state, then the endpoint and the route to it (plain http: no TLS peer).
    assert_eq!(
        p.describe().await.unwrap(),
        format!(
            "jdcloud key {FAKE_KEY_ID}: enabled; http://{} direct",
            fake.endpoint()
        )
    );
    fake.set_key_status(FAKE_KEY_ID, 1);
    assert_eq!(p.key_state().await.unwrap(), KeyState::Disabled);
    // A key that cannot seal fails `check`: describe reports it as a refusal, naming the state.
    let e = p.describe().await.unwrap_err();
    assert_eq!(kind(&e), "Refused");
    assert!(
        e.to_string()
            .contains(&format!("jdcloud key {FAKE_KEY_ID}: disabled")),
        "{e}"
    );
    fake.set_key_status(FAKE_KEY_ID, 2);
    assert_eq!(p.key_state().await.unwrap(), KeyState::PendingDeletion);
    assert_eq!(fake.counts().describe, 4);
    let unknown = provider(&spec_for(&fake, "no-such-key", Duration::from_secs(2)));
    assert_eq!(kind(&unknown.describe().await.unwrap_err()), "Refused");
}

#[tokio::test]
async fn disabled_or_unknown_key_is_refused_once_without_retry() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&fake_spec(&fake));
    let wrapped = p.wrap(&dk(1)).await.unwrap();
    fake.reset_counts();
    fake.set_keys_enabled(false);
    let e = p.wrap(&dk(1)).await.unwrap_err();
    assert_eq!(kind(&e), "Refused", "{e}");
    assert!(e.to_string().contains("disabled"), "{e}");
    let e = p.unwrap(&wrapped).await.unwrap_err();
    assert_eq!(kind(&e), "Refused", "{e}");
    assert_eq!((fake.counts().encrypt, fake.counts().decrypt), (1, 1));
    fake.set_keys_enabled(true);
    assert_eq!(p.unwrap(&wrapped).await.unwrap(), dk(1));

    fake.reset_counts();
    let unknown = provider(&spec_for(&fake, "no-such-key", Duration::from_secs(2)));
    let e = unknown.wrap(&dk(1)).await.unwrap_err();
    assert_eq!(kind(&e), "Refused", "{e}");
    assert!(e.to_string().contains("404"), "{e}");
    assert_eq!(fake.counts().encrypt, 1);
}

#[tokio::test]
async fn wrong_credentials_are_permission_denied_and_not_retried() {
    let fake = FakeJdCloud::start().await;
    let mut spec = fake_spec(&fake);
    spec.secret_key = crate::secret::SecretString::new("wrong-secret-key-value".into());
    let e = provider(&spec).wrap(&dk(2)).await.unwrap_err();
    assert_eq!(kind(&e), "PermissionDenied", "{e}");
    assert!(e.to_string().contains("sign result is not same"), "{e}");
    assert!(!e.to_string().contains("wrong-secret-key-value"));
    let c = fake.counts();
    assert_eq!((c.encrypt, c.bad_signature), (1, 1), "{c:?}");

    let mut spec = fake_spec(&fake);
    spec.access_key = crate::secret::SecretString::new("OTHERAK".into());
    let e = provider(&spec).describe().await.unwrap_err();
    assert_eq!(kind(&e), "PermissionDenied", "{e}");
    assert_eq!(fake.counts().describe, 1);
}

#[tokio::test]
async fn transient_failures_are_retried_then_succeed() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&fake_spec(&fake));
    let wrapped = p.wrap(&dk(3)).await.unwrap();
    for fault in [
        Fault::Status500,
        Fault::Status503,
        Fault::Status429,
        Fault::DropConnection,
    ] {
        fake.reset_counts();
        fake.fail_next(2, fault);
        let w = p
            .wrap(&dk(3))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(p.unwrap(&w).await.unwrap(), dk(3));
        let c = fake.counts();
        assert_eq!(
            (c.encrypt, c.decrypt, c.faults),
            (3, 1, 2),
            "{fault:?}: {c:?}"
        );

        fake.reset_counts();
        fake.fail_next(1, fault);
        assert_eq!(p.unwrap(&wrapped).await.unwrap(), dk(3), "{fault:?}");
        assert_eq!(fake.counts().decrypt, 2, "{fault:?}");
    }
}

#[tokio::test]
async fn persistent_transient_failures_are_unavailable_after_three_attempts() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&fake_spec(&fake));
    let wrapped = p.wrap(&dk(4)).await.unwrap();
    for fault in [
        Fault::Status500,
        Fault::Status503,
        Fault::Status429,
        Fault::DropConnection,
    ] {
        fake.reset_counts();
        fake.set_fault(fault);
        let e = p.wrap(&dk(4)).await.unwrap_err();
        assert_eq!(kind(&e), "Unavailable", "{fault:?}: {e}");
        assert!(e.to_string().contains("3 attempt"), "{e}");
        let e = p.unwrap(&wrapped).await.unwrap_err();
        assert_eq!(kind(&e), "Unavailable", "{fault:?}: {e}");
        let c = fake.counts();
        assert_eq!((c.encrypt, c.decrypt), (3, 3), "{fault:?}: {c:?}");
        fake.clear_fault();
    }
    // And it recovers by itself.
    assert_eq!(p.unwrap(&wrapped).await.unwrap(), dk(4));
}

#[tokio::test]
async fn unusable_success_answers_are_unavailable_never_empty_keys() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&fake_spec(&fake));
    let wrapped = p.wrap(&dk(5)).await.unwrap();
    let legacy = wire::b64_encode(&fake.legacy_ciphertext(b"legacy payload"));
    for fault in [Fault::GarbageJson, Fault::EmptyResult, Fault::EmptyValue] {
        fake.reset_counts();
        fake.set_fault(fault);
        let e = p.wrap(&dk(5)).await.unwrap_err();
        assert_eq!(kind(&e), "Unavailable", "{fault:?}: {e}");
        let e = p.unwrap(&wrapped).await.unwrap_err();
        assert_eq!(kind(&e), "Unavailable", "{fault:?}: {e}");
        let e = p.decrypt_legacy(&legacy).await.unwrap_err();
        assert_eq!(kind(&e), "Unavailable", "{fault:?}: {e}");
        let e = p.describe().await.unwrap_err();
        assert_eq!(kind(&e), "Unavailable", "{fault:?}: {e}");
        // Not retried: a broken answer is not a transient transport failure.
        let c = fake.counts();
        assert_eq!(
            (c.encrypt, c.decrypt, c.describe),
            (1, 2, 1),
            "{fault:?}: {c:?}"
        );
    }
    fake.set_fault(Fault::ShortPlaintext);
    let e = p.unwrap(&wrapped).await.unwrap_err();
    assert_eq!(kind(&e), "Unavailable", "{e}");
    assert!(e.to_string().contains("15 bytes"), "{e}");
    fake.clear_fault();
    assert_eq!(p.unwrap(&wrapped).await.unwrap(), dk(5));
}

#[tokio::test]
async fn a_hanging_kms_is_unavailable_within_the_deadline() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&short(&fake, 300));
    let wrapped = p.wrap(&dk(6)).await.unwrap();
    fake.reset_counts();
    fake.set_delay(Duration::from_secs(5));
    let started = Instant::now();
    let e = p.unwrap(&wrapped).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(kind(&e), "Unavailable", "{e}");
    // Deadline 1.4 × 300 ms = 420 ms; allow a loaded 2-core box plenty of slack.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "gave up too early: {took:?}"
    );
    let c = fake.counts();
    assert!((1..=3).contains(&c.decrypt), "{c:?}");
    fake.set_delay(Duration::ZERO);
    assert_eq!(p.unwrap(&wrapped).await.unwrap(), dk(6));
}

#[tokio::test]
async fn a_kms_that_is_down_is_unavailable_fast_and_recovery_is_automatic() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&fake_spec(&fake));
    let wrapped = p.wrap(&dk(7)).await.unwrap();
    fake.set_down(true).await;
    fake.reset_counts();
    let started = Instant::now();
    let e = p.unwrap(&wrapped).await.unwrap_err();
    assert_eq!(kind(&e), "Unavailable", "{e}");
    let e2 = p.wrap(&dk(7)).await.unwrap_err();
    assert_eq!(kind(&e2), "Unavailable", "{e2}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        fake.counts(),
        Counts::default(),
        "nothing reached a fake that is down"
    );
    fake.set_down(false).await;
    assert_eq!(p.unwrap(&wrapped).await.unwrap(), dk(7));
    assert_eq!(fake.counts().decrypt, 1);
}

#[tokio::test]
async fn foreign_or_broken_wrapped_keys_are_invalid() {
    let fake = FakeJdCloud::start().await;
    fake.add_key("second-key");
    let p = provider(&fake_spec(&fake));
    let other = provider(&spec_for(&fake, "second-key", Duration::from_secs(2)));
    let wrapped_by_other = other.wrap(&dk(8)).await.unwrap();
    fake.reset_counts();
    let e = p.unwrap(&wrapped_by_other).await.unwrap_err();
    assert_eq!(kind(&e), "InvalidWrappedKey", "{e}");
    assert_eq!(fake.counts().decrypt, 1, "a 400 is not retried");
    // Not even sent: not base64 text, empty, too long.
    fake.reset_counts();
    for bad in [&b""[..], b"\xff\xfe", b"***not base64***", &[b'A'; 5000]] {
        let e = p.unwrap(bad).await.unwrap_err();
        assert_eq!(kind(&e), "InvalidWrappedKey", "{e}");
    }
    assert_eq!(fake.counts().total(), 0);
}

#[tokio::test]
async fn legacy_ciphertexts_of_the_jd_plugin_decrypt_to_their_payload() {
    let fake = FakeJdCloud::start().await;
    let p = provider(&fake_spec(&fake));
    assert!(p.legacy_ciphertexts());
    for payload in [
        &b"k8s:enc:kms:v1:secret payload"[..],
        &[0u8; 1],
        &[7u8; 3000],
    ] {
        let raw = fake.legacy_ciphertext(payload);
        let got = p.decrypt_legacy(&wire::b64_encode(&raw)).await.unwrap();
        assert_eq!(got.as_slice(), payload);
    }
    let e = p.decrypt_legacy("").await.unwrap_err();
    assert_eq!(kind(&e), "InvalidWrappedKey", "{e}");
}

#[tokio::test]
async fn concurrent_calls_use_distinct_nonces() {
    let fake = FakeJdCloud::start().await;
    let p = std::sync::Arc::new(provider(&fake_spec(&fake)));
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let w = p.wrap(&dk(i)).await.unwrap();
            assert_eq!(p.unwrap(&w).await.unwrap(), dk(i));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = fake.counts();
    assert_eq!(
        (c.encrypt, c.decrypt, c.replayed_nonce, c.bad_signature),
        (32, 32, 0, 0),
        "{c:?}"
    );
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_unavailable() {
    let fake = FakeJdCloud::start().await;
    let mut spec = short(&fake, 500);
    spec.schema = "https".into();
    let e = provider(&spec).wrap(&dk(9)).await.unwrap_err();
    assert_eq!(kind(&e), "Unavailable", "{e}");
}

#[test]
fn bad_configs_are_config_errors_and_never_show_secrets() {
    let spec = JdCloudSpec {
        access_key: crate::secret::SecretString::new("AKVISIBLE".into()),
        secret_key: crate::secret::SecretString::new("SKHIDDEN-123".into()),
        endpoint: "kms.example.com".into(),
        key_id: "key-1".into(),
        schema: "https".into(),
        timeout: Duration::from_millis(2000),
        sign_version: SignVersion::V3,
        legacy_ciphertexts: false,
        network: Default::default(),
    };
    let p = JdCloudProvider::new(&spec).expect("builds without a runtime or a remote call");
    let shown = format!("{p:?}");
    assert!(
        !shown.contains("SKHIDDEN") && !shown.contains("AKVISIBLE"),
        "{shown}"
    );
    assert!(shown.contains("jdcloud-key-1"), "{shown}");
    assert_eq!(p.retry_policy().deadline, Duration::from_millis(2800));
    let bad = |f: &dyn Fn(&mut JdCloudSpec)| {
        let mut s = spec.clone();
        f(&mut s);
        match JdCloudProvider::new(&s) {
            Err(ProviderError::Config(m)) => {
                assert!(!m.message().contains("SKHIDDEN"), "{m}");
                m
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    };
    bad(&|s| s.key_id = String::new());
    bad(&|s| s.key_id = " key-1".into());
    bad(&|s| s.key_id = "x".repeat(250));
    bad(&|s| s.schema = "ftp".into());
    bad(&|s| s.endpoint = "https://kms.example.com".into());
    bad(&|s| s.endpoint = String::new());
    bad(&|s| s.timeout = Duration::ZERO);
    bad(&|s| s.secret_key = crate::secret::SecretString::new(" ".into()));
    bad(&|s| s.access_key = crate::secret::SecretString::new(String::new()));
}

/// Sends one hand-made HTTP/1.1 request (its own connection) and returns status and body.
async fn raw_send(fake: &FakeJdCloud, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A request signed with our signer for the fake, with a chosen date and nonce.
fn signed_head(fake: &FakeJdCloud, body: &[u8], date: &str, nonce: &str, sk: &str) -> String {
    let path = client::wire_path(SignVersion::V3, FAKE_KEY_ID, Some("Encrypt"));
    let host = fake.endpoint();
    let headers = [
        ("content-type", "application/json"),
        (sign::HEADER_DATE, date),
        (sign::HEADER_NONCE, nonce),
    ];
    let req = sign::Request {
        method: "POST",
        host: &host,
        path: &path,
        query: "",
        headers: &headers,
        body,
    };
    let creds = sign::Credentials {
        access_key: fake.access_key(),
        secret_key: sk,
    };
    let auth = sign::authorization(
        SignVersion::V3,
        &req,
        date,
        sign::REGION,
        sign::SERVICE,
        &creds,
    );
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         x-jdcloud-date: {date}\r\nx-jdcloud-nonce: {nonce}\r\nAuthorization: {auth}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
}

#[tokio::test]
async fn the_fake_rejects_reused_nonces_bad_signatures_and_stale_dates() {
    let fake = FakeJdCloud::start().await;
    let body = br#"{"keyId":"x","plaintext":"AAECAwQFBgcICQoLDA0ODw=="}"#;
    let now = sign::format_date(SystemTime::now());
    let head = signed_head(&fake, body, &now, "nonce-1", FAKE_SECRET_KEY);
    let (status, answer) = raw_send(&fake, &head, body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("ciphertextBlob"), "{answer}");
    // The same signed request again: the nonce was seen.
    let (status, answer) = raw_send(&fake, &head, body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer.contains("ACCESS_ERROR") && answer.contains("nonce"),
        "{answer}"
    );
    assert_eq!(fake.counts().replayed_nonce, 1);

    // Tampered body under a valid signature.
    let head = signed_head(&fake, body, &now, "nonce-2", FAKE_SECRET_KEY);
    let tampered = br#"{"keyId":"x","plaintext":"AQECAwQFBgcICQoLDA0ODw=="}"#;
    let (status, answer) = raw_send(&fake, &head, tampered).await;
    assert_eq!(status, 401, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "ACCESS_ERROR");
    assert_eq!(v["error"]["message"], "sign result is not same");
    assert!(v["requestId"].is_string());

    // Wrong secret key.
    let head = signed_head(&fake, body, &now, "nonce-3", "not-the-secret");
    assert_eq!(raw_send(&fake, &head, body).await.0, 401);

    // A date an hour old.
    let old = sign::format_date(SystemTime::now() - Duration::from_secs(3600));
    let head = signed_head(&fake, body, &old, "nonce-4", FAKE_SECRET_KEY);
    assert_eq!(raw_send(&fake, &head, body).await.0, 401);
    assert_eq!(fake.counts().bad_signature, 3);

    // No signature at all.
    let (status, _) = raw_send(
        &fake,
        "GET /v1/key/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 401);
    // Unknown path.
    let (status, answer) = raw_send(
        &fake,
        "GET /v2/other HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(fake.counts().other, 1);
}

#[tokio::test]
async fn the_fake_listens_on_the_same_port_after_coming_back() {
    let fake = FakeJdCloud::start().await;
    let addr = fake.addr();
    fake.set_down(true).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "refused while down"
    );
    fake.set_down(false).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    let cfg: serde_json::Value =
        serde_json::from_str(&fake.seed_config_json("/tmp/x.sock")).unwrap();
    assert_eq!(cfg["KmsEndpoint"], addr.to_string());
    assert_eq!(cfg["KmsKeyId"], FAKE_KEY_ID);
    assert_eq!(cfg["KmsSchema"], "http");
}

/// A TLS fake for `127.0.0.1` under a fresh test CA, and a spec that trusts that CA (`KmsCaFile`).
async fn tls_fake(
    dir: &std::path::Path,
    leaf: impl Fn(&gm_kms_testkit::pki::TestCa) -> gm_kms_testkit::pki::ServerIdentity,
) -> (FakeJdCloud, JdCloudSpec) {
    let ca = gm_kms_testkit::pki::TestCa::new("gm-kms unit-test CA");
    let fake = FakeJdCloud::start_tls(&leaf(&ca)).await;
    let mut spec = short(&fake, 1000);
    spec.schema = "https".into();
    spec.network.ca_file = Some(ca.write_pem(dir, "ca.pem"));
    spec.network.ca_file_only = true;
    (fake, spec)
}

#[tokio::test]
async fn https_with_kms_ca_file_round_trips_and_shows_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, spec) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    let p = provider(&spec);
    let key = dk(3);
    let wrapped = p.wrap(&key).await.expect("wrap over https");
    assert_eq!(p.unwrap(&wrapped).await.unwrap(), key);
    let line = p.describe().await.unwrap();
    assert!(
        line.starts_with(&format!(
            "jdcloud key {FAKE_KEY_ID}: enabled; https://127.0.0.1:"
        )),
        "{line}"
    );
    assert!(
        line.contains("direct; TLS peer subject \"")
            && line.contains("CN=127.0.0.1")
            && line.contains("issuer \"")
            && line.contains("CN=gm-kms unit-test CA")
            && line.contains("not after 20"),
        "{line}"
    );
    let c = fake.counts();
    assert_eq!(
        (c.encrypt, c.decrypt, c.describe, c.tls_failures),
        (1, 1, 1, 0),
        "{c:?}"
    );
    assert!(c.tls_handshakes >= 1, "{c:?}");
}

#[tokio::test]
async fn refused_certificates_are_unavailable_at_once_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    type Leaf = fn(&gm_kms_testkit::pki::TestCa) -> gm_kms_testkit::pki::ServerIdentity;
    let cases: [(&str, Leaf, bool); 3] = [
        ("UnknownIssuer", |ca| ca.server(&["127.0.0.1"]), false),
        (
            "not valid for name",
            |ca| ca.server(&["kms.other.example"]),
            true,
        ),
        ("expired", |ca| ca.expired_server(&["127.0.0.1"]), true),
    ];
    for (want, leaf, trust) in cases {
        let (fake, mut spec) = tls_fake(dir.path(), leaf).await;
        if !trust {
            spec.network = Default::default();
        }
        let started = Instant::now();
        let e = provider(&spec).wrap(&dk(1)).await.unwrap_err();
        assert_eq!(kind(&e), "Unavailable", "{e}");
        let text = e.to_string();
        assert!(
            text.contains(want) && text.contains("after 1 attempt"),
            "{want}: {text}"
        );
        assert!(started.elapsed() < Duration::from_millis(900), "{text}");
        // The fake counts the failed handshake once it has read the client's alert.
        for _ in 0..200 {
            if fake.counts().tls_failures > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let c = fake.counts();
        assert_eq!(
            (c.connections, c.tls_failures, c.total()),
            (1, 1, 0),
            "{want}: {c:?}"
        );
    }
}
