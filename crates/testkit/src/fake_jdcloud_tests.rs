//! The fake on its own, spoken to over raw HTTP/1.1 with requests signed by the verifier's test signer.

use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::jdcloud_sig::{Version, test_authorization};

/// `YYYYMMDDTHHMMSSZ` of `t`.
fn jd_date(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn fresh_nonce() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("nonce-{}", N.fetch_add(1, Ordering::SeqCst))
}

/// One request on its own connection; the status (`None`: closed without an answer) and the JSON body.
async fn send(fake: &FakeJdCloud, head: &str, body: &[u8]) -> (Option<u16>, Value) {
    let mut s = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The fake may answer (and close) before it has read an over-long body.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

/// A request as an SDK signs it: `version`, now, a fresh nonce, the fake's credentials unless `secret`.
struct Call<'a> {
    version: Version,
    method: &'a str,
    path: String,
    body: String,
    date: String,
    nonce: String,
    secret: Option<&'a str>,
}

impl<'a> Call<'a> {
    fn new(version: Version, method: &'a str, path: &str, body: Value) -> Self {
        Call {
            version,
            method,
            path: path.to_owned(),
            body: if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
            date: jd_date(SystemTime::now()),
            nonce: fresh_nonce(),
            secret: None,
        }
    }

    fn head(&self, fake: &FakeJdCloud) -> String {
        let host = fake.endpoint();
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/json"),
            ("x-jdcloud-date", self.date.as_str()),
            ("x-jdcloud-nonce", self.nonce.as_str()),
        ];
        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let req = Received {
            method: self.method,
            path,
            query,
            headers: &headers,
            body: self.body.as_bytes(),
        };
        let secret = self.secret.unwrap_or(fake.secret_key());
        let auth = test_authorization(self.version, &req, fake.access_key(), secret);
        format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nx-jdcloud-date: {}\r\n\
             x-jdcloud-nonce: {}\r\nAuthorization: {auth}\r\nUser-Agent: testkit\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.method,
            self.path,
            self.date,
            self.nonce,
            self.body.len()
        )
    }

    async fn send(&self, fake: &FakeJdCloud) -> (Option<u16>, Value) {
        send(fake, &self.head(fake), self.body.as_bytes()).await
    }
}

fn encrypt(version: Version, key: &str, plaintext: &[u8]) -> Call<'static> {
    let sep = if version == Version::V3 { ":" } else { "%3A" };
    Call::new(
        version,
        "POST",
        &format!("/v1/key/{key}{sep}Encrypt"),
        json!({"keyId": key, "plaintext": base64_encode(plaintext)}),
    )
}

fn decrypt(version: Version, key: &str, blob: &str) -> Call<'static> {
    let sep = if version == Version::V3 { ":" } else { "%3A" };
    Call::new(
        version,
        "POST",
        &format!("/v1/key/{key}{sep}Decrypt"),
        json!({"keyId": key, "ciphertextBlob": blob}),
    )
}

fn describe(key: &str) -> Call<'static> {
    Call::new(Version::V3, "GET", &format!("/v1/key/{key}"), Value::Null)
}

#[tokio::test]
async fn encrypt_decrypt_describe_with_both_signature_versions() {
    let fake = FakeJdCloud::start().await;
    let key = fake.key_id().to_owned();
    for version in [Version::V3, Version::V2] {
        fake.reset_counts();
        let (status, answer) = encrypt(version, &key, b"sixteen byte key")
            .send(&fake)
            .await;
        assert_eq!(status, Some(200), "{version:?} {answer}");
        assert!(answer["requestId"].is_string(), "{answer}");
        let blob = answer["result"]["ciphertextBlob"]
            .as_str()
            .unwrap()
            .to_owned();
        let raw = base64_decode(&blob).unwrap();
        assert_eq!(raw.len(), 1 + NONCE_LEN + 16 + 16);
        assert_eq!(raw[0], BLOB_VERSION);

        let (status, answer) = decrypt(version, &key, &blob).send(&fake).await;
        assert_eq!(status, Some(200), "{answer}");
        let plaintext = answer["result"]["plaintext"].as_str().unwrap();
        assert_eq!(base64_decode(plaintext).unwrap(), b"sixteen byte key");

        let c = fake.counts();
        assert_eq!((c.encrypt, c.decrypt, c.total()), (1, 1, 2), "{c:?}");
    }
    let (status, answer) = describe(&key).send(&fake).await;
    assert_eq!(status, Some(200), "{answer}");
    assert_eq!(answer["result"]["keyInfo"]["keyId"], key.as_str());
    assert_eq!(answer["result"]["keyInfo"]["keyStatus"], 0);
    assert_eq!(fake.counts().describe, 1);
}

#[tokio::test]
async fn blobs_are_sm4_gcm_under_the_fixed_master_key() {
    let fake = FakeJdCloud::start().await;
    // Vectors from an independent SM4-GCM (OpenSSL's, through Python's `cryptography`): a blob of a fixed
    // nonce, and the wrapped data key of tests/golden/jdcloud.json.
    let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| i as u8);
    let blob = fake
        .state
        .seal_blob(BLOB_VERSION, nonce, "k1", b"fake blob vector");
    assert_eq!(
        base64_encode(&blob),
        "AQABAgMEBQYHCAkKC8IHtudAlS6vdteH7rGLzd89TyRIMehNzf6pjbqRSCLn"
    );
    assert_eq!(
        fake.state.open("k1", &blob).as_deref(),
        Some(&b"fake blob vector"[..])
    );
    assert_eq!(fake.state.open("k2", &blob), None, "the key id is the AAD");
    let golden =
        base64_decode("ATJM443PdLDkXKUA+ZJIQPMMBUArLywB03AR3iBMv58cnujDazWDFxaIsX4E").unwrap();
    assert_eq!(
        fake.state.open(FAKE_KEY_ID, &golden).map(hex::encode),
        Some("1459215deec30578ef4e9862d263c508".to_owned())
    );
    for broken in [
        &[][..],
        &[BLOB_VERSION],
        &blob[..20],
        &[&[2u8][..], &blob[1..]].concat(),
    ] {
        assert_eq!(fake.state.open("k1", broken), None);
    }

    let legacy = fake.legacy_ciphertext_with_prefix(b"payload", b"GMK\x01\x01");
    assert!(legacy.starts_with(b"GMK\x01\x01"));
    let (status, answer) = decrypt(Version::V3, FAKE_KEY_ID, &base64_encode(&legacy))
        .send(&fake)
        .await;
    assert_eq!(status, Some(200), "{answer}");
    assert_eq!(answer["result"]["plaintext"], base64_encode(b"payload"));
    let blob = fake.encrypt_blob(FAKE_KEY_ID, b"x");
    assert_eq!(
        fake.state.open(FAKE_KEY_ID, &base64_decode(&blob).unwrap()),
        Some(b"x".to_vec())
    );
    assert_eq!(
        fake.state.open(FAKE_KEY_ID, &fake.legacy_ciphertext(b"y")),
        Some(b"y".to_vec())
    );
}

#[tokio::test]
async fn refusals_have_jd_clouds_status_and_error_envelope() {
    let fake = FakeJdCloud::start().await;
    fake.add_key("second");
    let check = |(status, answer): (Option<u16>, Value), code: u16, name: &str, text: &str| {
        assert_eq!(status, Some(code), "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert_eq!(answer["error"]["status"], name, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{answer}");
        assert!(answer["requestId"].is_string(), "{answer}");
    };
    let v3 = Version::V3;
    check(
        encrypt(v3, "nope", b"k").send(&fake).await,
        404,
        "NOT_FOUND",
        "nope",
    );
    check(
        describe("nope").send(&fake).await,
        404,
        "NOT_FOUND",
        "not found",
    );
    check(
        encrypt(v3, FAKE_KEY_ID, b"").send(&fake).await,
        400,
        "INVALID_ARGUMENT",
        "length",
    );
    let big = vec![1u8; MAX_PLAINTEXT + 1];
    check(
        encrypt(v3, FAKE_KEY_ID, &big).send(&fake).await,
        400,
        "INVALID_ARGUMENT",
        "length",
    );
    let mut not_base64 = encrypt(v3, FAKE_KEY_ID, b"k");
    not_base64.body = json!({"plaintext": "***"}).to_string();
    check(
        not_base64.send(&fake).await,
        400,
        "INVALID_ARGUMENT",
        "base64",
    );
    let mut not_json = encrypt(v3, FAKE_KEY_ID, b"k");
    not_json.body = "{\"plaintext\":".into();
    check(
        not_json.send(&fake).await,
        400,
        "INVALID_ARGUMENT",
        "base64",
    );
    let other = fake.encrypt_blob("second", b"k");
    check(
        decrypt(v3, FAKE_KEY_ID, &other).send(&fake).await,
        400,
        "INVALID_ARGUMENT",
        "decrypt failed",
    );
    check(
        decrypt(v3, FAKE_KEY_ID, "@@").send(&fake).await,
        400,
        "INVALID_ARGUMENT",
        "decrypt failed",
    );

    let blob = fake.encrypt_blob(FAKE_KEY_ID, b"k");
    fake.set_key_status(FAKE_KEY_ID, 1);
    check(
        encrypt(v3, FAKE_KEY_ID, b"k").send(&fake).await,
        400,
        "FAILED_PRECONDITION",
        "disabled",
    );
    check(
        decrypt(v3, FAKE_KEY_ID, &blob).send(&fake).await,
        400,
        "FAILED_PRECONDITION",
        "disabled",
    );
    fake.set_key_status(FAKE_KEY_ID, 2);
    check(
        encrypt(v3, FAKE_KEY_ID, b"k").send(&fake).await,
        400,
        "FAILED_PRECONDITION",
        "deletion",
    );
    let (_, answer) = describe(FAKE_KEY_ID).send(&fake).await;
    assert_eq!(answer["result"]["keyInfo"]["keyStatus"], 2);
    fake.set_keys_enabled(true);
    assert_eq!(
        decrypt(v3, FAKE_KEY_ID, &blob).send(&fake).await.0,
        Some(200)
    );

    // Routes: another path, method or action is 404 and counted as `other`.
    fake.reset_counts();
    for (method, path) in [
        ("GET", "/v2/other"),
        ("POST", "/v1/key/x:Rotate"),
        ("GET", "/v1/key/x:Encrypt"),
        ("POST", "/v1/key/x"),
        ("GET", "/v1/key/"),
        ("GET", "/v1/key/a/b"),
    ] {
        let call = Call::new(v3, method, path, Value::Null);
        check(call.send(&fake).await, 404, "NOT_FOUND", "api not found");
    }
    assert_eq!(fake.counts().other, 6);
    assert_eq!(fake.counts().total(), 6);
    // A body over 64 KiB.
    let mut huge = encrypt(v3, FAKE_KEY_ID, b"k");
    huge.body = "x".repeat(MAX_BODY + 1);
    check(huge.send(&fake).await, 400, "INVALID_ARGUMENT", "too large");
}

#[tokio::test]
async fn the_gateway_refuses_bad_signatures_stale_dates_and_replays() {
    let fake = FakeJdCloud::start().await;
    let deny = |(status, answer): (Option<u16>, Value), text: &str| {
        assert_eq!(status, Some(401), "{answer}");
        assert_eq!(answer["error"]["status"], "ACCESS_ERROR", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{message}");
    };
    let good = encrypt(Version::V3, FAKE_KEY_ID, b"k");
    assert_eq!(good.send(&fake).await.0, Some(200));
    deny(good.send(&fake).await, "nonce has been used");
    assert_eq!(fake.counts().replayed_nonce, 1);

    let mut wrong_secret = encrypt(Version::V2, FAKE_KEY_ID, b"k");
    wrong_secret.secret = Some("not the secret");
    deny(wrong_secret.send(&fake).await, "sign result is not same");
    let tampered = encrypt(Version::V3, FAKE_KEY_ID, b"k");
    let head = tampered.head(&fake);
    deny(
        send(
            &fake,
            &head,
            tampered.body.replace("keyId", "keyID").as_bytes(),
        )
        .await,
        "sign result",
    );
    for skew in [Duration::from_secs(3600), Duration::from_secs(16 * 60)] {
        let mut old = encrypt(Version::V3, FAKE_KEY_ID, b"k");
        old.date = jd_date(SystemTime::now() - skew);
        deny(old.send(&fake).await, "x-jdcloud-date");
        let mut ahead = encrypt(Version::V3, FAKE_KEY_ID, b"k");
        ahead.date = jd_date(SystemTime::now() + skew);
        deny(ahead.send(&fake).await, "x-jdcloud-date");
    }
    let mut close = encrypt(Version::V3, FAKE_KEY_ID, b"k");
    close.date = jd_date(SystemTime::now() - Duration::from_secs(10 * 60));
    assert_eq!(close.send(&fake).await.0, Some(200));

    let unsigned = "GET /v1/key/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    deny(send(&fake, unsigned, b"").await, "missing or malformed");
    let head = good.head(&fake).replace(FAKE_ACCESS_KEY, "OTHERAK");
    deny(
        send(&fake, &head, good.body.as_bytes()).await,
        "invalid accesskey",
    );
    let fresh = encrypt(Version::V3, FAKE_KEY_ID, b"k");
    let head = fresh.head(&fake).replace("x-jdcloud-nonce: ", "x-other: ");
    deny(send(&fake, &head, fresh.body.as_bytes()).await, "required");
    let head = fresh.head(&fake).replace(";x-jdcloud-nonce,", ",");
    deny(
        send(&fake, &head, fresh.body.as_bytes()).await,
        "must be signed",
    );
    let c = fake.counts();
    assert_eq!((c.bad_signature, c.replayed_nonce), (10, 1), "{c:?}");
}

#[tokio::test]
async fn faults_replace_answers_after_the_gateway() {
    let fake = FakeJdCloud::start().await;
    let blob = fake.encrypt_blob(FAKE_KEY_ID, b"sixteen byte key");
    let statuses = [
        (Fault::Status500, 500, "INTERNAL_ERROR"),
        (Fault::Status503, 503, "SERVICE_UNAVAILABLE"),
        (Fault::Status429, 429, "RATE_LIMIT"),
    ];
    for (fault, code, name) in statuses {
        fake.set_fault(fault);
        for _ in 0..2 {
            let (status, answer) = encrypt(Version::V3, FAKE_KEY_ID, b"k").send(&fake).await;
            assert_eq!(status, Some(code), "{answer}");
            assert_eq!(answer["error"]["status"], name);
        }
        fake.clear_fault();
    }
    assert_eq!(fake.counts().faults, 6);

    fake.set_fault(Fault::DropConnection);
    assert_eq!(describe(FAKE_KEY_ID).send(&fake).await.0, None);
    fake.set_fault(Fault::GarbageJson);
    let (status, answer) = encrypt(Version::V3, FAKE_KEY_ID, b"k").send(&fake).await;
    assert_eq!((status, answer), (Some(200), Value::Null), "truncated JSON");
    fake.set_fault(Fault::EmptyResult);
    let (status, answer) = decrypt(Version::V3, FAKE_KEY_ID, &blob).send(&fake).await;
    assert_eq!((status, &answer["result"]), (Some(200), &json!({})));
    fake.set_fault(Fault::EmptyValue);
    let (_, answer) = encrypt(Version::V3, FAKE_KEY_ID, b"k").send(&fake).await;
    assert_eq!(answer["result"], json!({"ciphertextBlob": ""}));
    let (_, answer) = decrypt(Version::V3, FAKE_KEY_ID, &blob).send(&fake).await;
    assert_eq!(answer["result"], json!({"plaintext": ""}));
    let (_, answer) = describe(FAKE_KEY_ID).send(&fake).await;
    assert_eq!(answer["result"], json!({"keyInfo": {}}));
    fake.set_fault(Fault::ShortPlaintext);
    let (_, answer) = decrypt(Version::V3, FAKE_KEY_ID, &blob).send(&fake).await;
    let short = base64_decode(answer["result"]["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(short, b"sixteen byte ke");
    let (status, _) = encrypt(Version::V3, FAKE_KEY_ID, b"k").send(&fake).await;
    assert_eq!(status, Some(200), "ShortPlaintext leaves Encrypt alone");

    // A refused signature is refused before any fault.
    fake.reset_counts();
    let mut bad = encrypt(Version::V3, FAKE_KEY_ID, b"k");
    bad.secret = Some("wrong");
    assert_eq!(bad.send(&fake).await.0, Some(401));
    assert_eq!(fake.counts().faults, 0);

    fake.fail_next(2, Fault::Status503);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(describe(FAKE_KEY_ID).send(&fake).await.0);
    }
    assert_eq!(got, [Some(503), Some(503), Some(200)]);
    fake.clear_fault();

    fake.set_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert_eq!(describe(FAKE_KEY_ID).send(&fake).await.0, Some(200));
    assert!(started.elapsed() >= Duration::from_millis(300));
    fake.set_delay(Duration::ZERO);
}

#[tokio::test]
async fn down_and_up_on_the_same_port_and_cut_connections() {
    let fake = FakeJdCloud::start().await;
    let addr = fake.addr();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Cut until the server has accepted the connection (it may not have yet) and closed it.
    let mut closed = false;
    for _ in 0..100 {
        fake.cut_connections();
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), idle.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("the fake sent something unasked"),
            Err(_) => {}
        }
    }
    assert!(closed, "an open connection survived cut_connections");

    fake.set_down(true).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    fake.set_down(true).await;
    fake.set_down(false).await;
    fake.set_down(false).await;
    assert_eq!(describe(FAKE_KEY_ID).send(&fake).await.0, Some(200));
    assert_eq!(fake.addr(), addr);
}

#[tokio::test]
async fn configs_point_at_the_fake() {
    let fake = FakeJdCloud::start_with("AK2", "SK2", "key-2").await;
    assert_eq!(
        (fake.access_key(), fake.secret_key(), fake.key_id()),
        ("AK2", "SK2", "key-2")
    );
    assert_eq!(fake.endpoint(), fake.addr().to_string());
    assert_eq!(
        fake.config_json("other"),
        json!({
            "AccessKey": "AK2",
            "SecretKey": "SK2",
            "KmsEndpoint": fake.endpoint(),
            "KmsKeyId": "other",
            "KmsSchema": "http",
        })
    );
    let seed: Value = serde_json::from_str(&fake.seed_config_json("/run/kms.sock")).unwrap();
    let mut want = fake.config_json("key-2");
    want["GRPCSocketPath"] = json!("/run/kms.sock");
    assert_eq!(seed, want);
}

#[tokio::test]
async fn tls_mode_serves_https_and_counts_handshakes() {
    use crate::pki::TestCa;
    let ca = TestCa::new("testkit CA");
    let fake = FakeJdCloud::start_tls(&ca.server(&["127.0.0.1"])).await;
    assert_eq!(fake.schema(), "https");
    assert_eq!(fake.config_json(FAKE_KEY_ID)["KmsSchema"], "https");
    let client = |trusted: &TestCa| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.cert_der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    // Trusted: an unsigned request gets the gateway's 401, over TLS.
    let tcp = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
    let mut tls = client(&ca).connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET /v1/key/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 401"));
    // Another CA: the client refuses, the fake counts a failed handshake.
    let tcp = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
    assert!(
        client(&TestCa::new("other CA"))
            .connect(name, tcp)
            .await
            .is_err()
    );
    for _ in 0..200 {
        if fake.counts().tls_failures > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = fake.counts();
    assert_eq!(
        (
            c.connections,
            c.tls_handshakes,
            c.tls_failures,
            c.describe,
            c.bad_signature
        ),
        (2, 1, 1, 1, 1),
        "{c:?}"
    );
}
