//! The `jdcloud` provider's network (issue 15), end to end through the real plugin binary: the fake JD
//! Cloud KMS served over real TLS (rustls, certificates of a test CA made in the test with rcgen), and a
//! real HTTP forward proxy — Debian's `tinyproxy`, started per test on a free 127.0.0.1 port with its own
//! config (`ConnectPort` of the fake, `BasicAuth` where credentials are tested) and counted from its log.
//!
//! What is counted: tinyproxy logs one `CONNECT 127.0.0.1:<fake port>` per tunnel and one absolute-form
//! request line per proxied plain-HTTP request; the fake counts the TCP connections it accepted. Each
//! test stops the plugin before comparing, so nothing is in flight: when the fake accepted exactly as
//! many connections as tinyproxy tunnelled, no KMS call went around the proxy.
//!
//! tinyproxy missing is a failure, not a skip (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gm_kms_plugin::proto::v2;
use gm_kms_testkit::fake_jdcloud::FakeJdCloud;
use gm_kms_testkit::pki::{ServerIdentity, TestCa};
use gm_kms_testkit::tinyproxy::{ProxyOptions, Tinyproxy};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::plugin::{self, Plugin, V2, binary, v2_decrypt, v2_encrypt, write_private};

/// The proxy variables a test process may have inherited, emptied (an empty value counts as unset), so
/// that only what a test sets decides the route.
const CLEAN_PROXY_ENV: [(&str, &str); 6] = [
    ("HTTPS_PROXY", ""),
    ("https_proxy", ""),
    ("HTTP_PROXY", ""),
    ("http_proxy", ""),
    ("NO_PROXY", ""),
    ("no_proxy", ""),
];

/// `CLEAN_PROXY_ENV` with `extra` on top.
fn env_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = CLEAN_PROXY_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// JD Cloud's plugin config for `fake` (its schema: `https` for a TLS fake), plus `extra`; written to
/// `dir/config.json`. Returns (config, socket).
fn config(fake: &FakeJdCloud, dir: &Path, extra: Value) -> (PathBuf, PathBuf) {
    let socket = dir.join("kms-plugin.sock");
    let mut config: Value =
        serde_json::from_str(&fake.seed_config_json(socket.to_str().unwrap())).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let path = dir.join("config.json");
    write_private(&path, config.to_string());
    (path, socket)
}

fn start(config: &Path, socket: &Path, env: &[(&str, &str)]) -> Plugin {
    tokio::task::block_in_place(|| Plugin::start_with_env(config, socket, env_with(env)))
}

/// `gm-kms-plugin check -f config` with `env`: (passed, stdout + stderr).
fn check(config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::task::block_in_place(|| {
        Command::new(binary())
            .arg("check")
            .arg("-f")
            .arg(config)
            .envs(env_with(env))
            .output()
            .expect("run check")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn wait_healthy(c: &mut V2) {
    for _ in 0..500 {
        let s = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
        if s.healthz == "ok" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("plugin never became healthy");
}

/// v2 Encrypt then Decrypt of a 32-byte DEK, and `n` Decrypts of fresh JD Cloud plugin ciphertexts (each
/// one KMS Decrypt call: its blob is new to the plugin).
async fn round_trips(fake: &FakeJdCloud, socket: &Path, n: usize) {
    let mut c = plugin::v2(socket).await;
    wait_healthy(&mut c).await;
    let ct = v2_encrypt(&mut c, &[7; 32]).await.unwrap().ciphertext;
    assert_eq!(v2_decrypt(&mut c, &ct).await.unwrap(), [7; 32]);
    for i in 0..n {
        let payload = format!("legacy payload {i}").into_bytes();
        let legacy = fake.legacy_ciphertext(&payload);
        assert_eq!(v2_decrypt(&mut c, &legacy).await.unwrap(), payload);
    }
}

/// A Decrypt that must reach KMS (a fresh legacy ciphertext).
async fn remote_decrypt(fake: &FakeJdCloud, socket: &Path) -> Result<Vec<u8>, tonic::Status> {
    let mut c = plugin::v2(socket).await;
    let payload = b"needs a KMS call".to_vec();
    let got = v2_decrypt(&mut c, &fake.legacy_ciphertext(&payload)).await?;
    assert_eq!(got, payload);
    Ok(got)
}

/// A TLS fake for `127.0.0.1` whose leaf `leaf` makes from a fresh CA; the CA is written to
/// `dir/ca.pem`.
async fn tls_fake(dir: &Path, leaf: impl Fn(&TestCa) -> ServerIdentity) -> (FakeJdCloud, PathBuf) {
    let ca = TestCa::new("gm-kms test CA");
    let fake = FakeJdCloud::start_tls(&leaf(&ca)).await;
    (fake, ca.write_pem(dir, "ca.pem"))
}

fn tinyproxy(options: ProxyOptions) -> Tinyproxy {
    tokio::task::block_in_place(|| Tinyproxy::start(options))
}

// ---- TLS ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trips_with_kms_ca_file_and_check_shows_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    for only in [false, true] {
        let (cfg, socket) = config(
            &fake,
            dir.path(),
            json!({"KmsCaFile": ca, "KmsCaFileOnly": only, "HealthAddr": ""}),
        );
        let before = fake.counts();
        let p = start(&cfg, &socket, &[]);
        round_trips(&fake, &socket, 5).await;
        assert_eq!(p.stop().code(), Some(0));
        let c = fake.counts();
        assert!(c.decrypt >= before.decrypt + 5, "{c:?}");
        assert!(c.tls_handshakes > before.tls_handshakes, "{c:?}");
        assert_eq!((c.tls_failures, c.bad_signature), (0, 0), "{c:?}");

        let (ok, out) = check(&cfg, &[]);
        assert!(ok, "{out}");
        let line = out
            .lines()
            .find(|l| l.contains("(primary, jdcloud)"))
            .unwrap_or_else(|| panic!("no key line:\n{out}"));
        println!("check (KmsCaFileOnly {only}): {line}");
        assert!(line.contains(": enabled; https://127.0.0.1:"), "{line}");
        assert!(line.contains(" direct; TLS peer subject \""), "{line}");
        assert!(line.contains("CN=127.0.0.1"), "{line}");
        assert!(
            line.contains("issuer \"") && line.contains("CN=gm-kms test CA"),
            "{line}"
        );
        assert!(line.contains("not after 20"), "{line}");
    }
}

/// The plugin with the default trust (no `KmsCaFile`) or with `KmsCaFile`, against a fake whose
/// certificate must be refused: Encrypt and an uncached Decrypt are `Unavailable` naming why, `check`
/// fails naming why, and no request reached the fake.
async fn assert_refused(fake: &FakeJdCloud, dir: &Path, extra: Value, why: &str) {
    let mut fields = json!({"HealthAddr": "", "KmsTimeoutMs": 1000});
    for (k, v) in extra.as_object().unwrap() {
        fields[k] = v.clone();
    }
    let (cfg, socket) = config(fake, dir, fields);
    let p = start(&cfg, &socket, &[]);
    let mut c = plugin::v2(&socket).await;
    let e = v2_encrypt(&mut c, &[1; 32]).await.unwrap_err();
    println!("refused ({why}): Encrypt: {:?} {}", e.code(), e.message());
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(why) && e.message().contains("TLS handshake with 127.0.0.1:"),
        "{e:?}"
    );
    let e = remote_decrypt(fake, &socket).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(why), "{e:?}");
    drop(p);
    let (ok, out) = check(&cfg, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED") && out.contains(why), "{out}");
    let counts = fake.counts();
    assert_eq!(counts.total(), 0, "nothing got past TLS: {counts:?}");
    assert!(counts.tls_failures >= 3, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_kms_ca_file_is_unavailable_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    assert_refused(
        &fake,
        dir.path(),
        json!({}),
        "invalid peer certificate: UnknownIssuer",
    )
    .await;
    // A KmsCaFile with another CA, alone, is refused the same way.
    let other = TestCa::new("some other CA").write_pem(dir.path(), "other-ca.pem");
    assert_refused(
        &fake,
        dir.path(),
        json!({"KmsCaFile": other, "KmsCaFileOnly": true}),
        "UnknownIssuer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| {
        ca.server(&["kms.cn-north-1.jdcloud-api.com"])
    })
    .await;
    assert_refused(
        &fake,
        dir.path(),
        json!({"KmsCaFile": ca}),
        "certificate not valid for name \"127.0.0.1\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| ca.expired_server(&["127.0.0.1"])).await;
    assert_refused(
        &fake,
        dir.path(),
        json!({"KmsCaFile": ca}),
        "certificate expired",
    )
    .await;
}

// ---- forward proxy -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_through_tinyproxy_every_call_is_tunnelled() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    let proxy = tinyproxy(ProxyOptions::new().connect_port(fake.addr().port()));
    let (cfg, socket) = config(
        &fake,
        dir.path(),
        json!({"KmsCaFile": ca, "KmsProxy": proxy.url(), "HealthAddr": ""}),
    );
    // The environment points elsewhere: KmsProxy wins, NO_PROXY does not apply to it.
    let env = [("HTTPS_PROXY", "http://127.0.0.1:9"), ("NO_PROXY", "*")];
    let p = start(&cfg, &socket, &env);
    round_trips(&fake, &socket, 20).await;
    assert_eq!(p.stop().code(), Some(0));
    let (ok, out) = check(&cfg, &env);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "via proxy {} (KmsProxy); TLS peer",
            proxy.host_port()
        )),
        "{out}"
    );

    let c = fake.counts();
    let tunnels = proxy.connects_to(&fake.endpoint());
    println!(
        "https via tinyproxy: {} KMS calls ({} Encrypt, {} Decrypt, {} DescribeKey) over {} connections; \
         tinyproxy tunnelled {tunnels} CONNECTs; {} requests in its log",
        c.total(),
        c.encrypt,
        c.decrypt,
        c.describe,
        c.connections,
        proxy.requests().len()
    );
    assert!(c.total() >= 23 && c.describe == 1, "{c:?}");
    assert!(tunnels >= 1, "{:?}", proxy.requests());
    assert_eq!(
        c.connections, tunnels as u64,
        "every connection came through the proxy"
    );
    assert_eq!(
        proxy.requests().len(),
        tunnels,
        "only CONNECTs: {:?}",
        proxy.requests()
    );
    assert_eq!((c.tls_failures, c.bad_signature), (0, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_tinyproxy_goes_in_absolute_form_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeJdCloud::start().await;
    let password = format!("pw-{}", fake.addr().port() as u64 * 7919);
    let proxy = tinyproxy(ProxyOptions::new().basic_auth("kmsuser", &password));
    let creds = dir.path().join("proxy-credentials");
    write_private(&creds, format!("kmsuser:{password}\n"));
    let (cfg, socket) = config(
        &fake,
        dir.path(),
        json!({"KmsProxy": proxy.url(), "KmsProxyCredentialsFile": creds, "HealthAddr": "", "DebugMode": true}),
    );
    let p = start(&cfg, &socket, &[]);
    round_trips(&fake, &socket, 10).await;
    let logs = p.logs();
    assert_eq!(p.stop().code(), Some(0));
    let c = fake.counts();
    let proxied = proxy.http_requests_to(&fake.endpoint());
    println!(
        "http via tinyproxy: {} KMS calls, {proxied} absolute-form requests in tinyproxy's log",
        c.total()
    );
    assert!(c.total() >= 12, "{c:?}");
    assert_eq!(
        c.total(),
        proxied as u64,
        "each call is one proxied request: {:?}",
        proxy.requests()
    );
    assert_eq!(c.bad_signature, 0, "the proxy kept the signed host: {c:?}");
    assert_no_secret(&logs, "kmsuser", &password);
}

/// Neither the user, nor the password, nor their Basic token appears in `text`.
fn assert_no_secret(text: &str, user: &str, password: &str) {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    for secret in [password, token.as_str(), &token[..token.len() / 2]] {
        assert!(!text.contains(secret), "{secret:?} leaked:\n{text}");
    }
    assert!(!text.contains(&format!("{user}:")), "user leaked:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_with_https_proxy_in_the_environment_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    let proxy = tinyproxy(ProxyOptions::new().connect_port(fake.addr().port()));
    // Exactly JD Cloud's six fields (KmsSchema https, as for the public endpoint). The private CA comes
    // the way Go's plugin takes it too: SSL_CERT_FILE.
    let socket = dir.path().join("kms-plugin.sock");
    let cfg = dir.path().join("config.json");
    let seed = fake.seed_config_json(socket.to_str().unwrap());
    let fields: Vec<String> = serde_json::from_str::<Value>(&seed)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        fields,
        [
            "AccessKey",
            "GRPCSocketPath",
            "KmsEndpoint",
            "KmsKeyId",
            "KmsSchema",
            "SecretKey"
        ]
    );
    write_private(&cfg, &seed);
    let url = proxy.url();
    let env = [
        ("HTTPS_PROXY", url.as_str()),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
    ];
    let p = start(&cfg, &socket, &env);
    round_trips(&fake, &socket, 10).await;
    assert_eq!(p.stop().code(), Some(0));
    let c = fake.counts();
    let tunnels = proxy.connects_to(&fake.endpoint());
    println!(
        "seed config + HTTPS_PROXY: {} KMS calls over {} connections, {tunnels} CONNECTs at tinyproxy",
        c.total(),
        c.connections
    );
    assert!(c.total() >= 12 && tunnels >= 1, "{c:?}");
    assert_eq!(
        c.connections,
        tunnels as u64,
        "{c:?} {:?}",
        proxy.requests()
    );
    let (ok, out) = check(&cfg, &env);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "via proxy {} (HTTPS_PROXY); TLS peer",
            proxy.host_port()
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_with_http_proxy_in_the_environment_works_unchanged() {
    // JD Cloud's sample as it is: the internal endpoint over http, and HTTP_PROXY (what Go reads for
    // http) in the environment, with Go-style credentials in the URL.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeJdCloud::start().await;
    let proxy = tinyproxy(ProxyOptions::new().basic_auth("gouser", "go-pw-77"));
    let socket = dir.path().join("kms-plugin.sock");
    let cfg = dir.path().join("config.json");
    write_private(&cfg, fake.seed_config_json(socket.to_str().unwrap()));
    let url = format!("http://gouser:go-pw-77@{}", proxy.host_port());
    let env = [
        ("HTTP_PROXY", url.as_str()),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ];
    let p = start(&cfg, &socket, &env);
    round_trips(&fake, &socket, 5).await;
    let logs = p.logs();
    assert_eq!(p.stop().code(), Some(0));
    let c = fake.counts();
    let proxied = proxy.http_requests_to(&fake.endpoint());
    println!(
        "seed config + HTTP_PROXY: {} KMS calls, {proxied} proxied requests",
        c.total()
    );
    assert!(c.total() >= 7, "{c:?}");
    assert_eq!(c.total(), proxied as u64, "{:?}", proxy.requests());
    assert_no_secret(&logs, "gouser", "go-pw-77");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_bypasses_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    let proxy = tinyproxy(ProxyOptions::new().connect_port(fake.addr().port()));
    let (cfg, socket) = config(
        &fake,
        dir.path(),
        json!({"KmsCaFile": ca, "HealthAddr": ""}),
    );
    let url = proxy.url();
    let p = start(
        &cfg,
        &socket,
        &[
            ("HTTPS_PROXY", url.as_str()),
            ("NO_PROXY", "localhost, 127.0.0.1"),
        ],
    );
    round_trips(&fake, &socket, 5).await;
    assert_eq!(p.stop().code(), Some(0));
    for no_proxy in [
        ("NO_PROXY", "127.0.0.0/8"),
        ("no_proxy", "*"),
        ("NO_PROXY", "127.0.0.1"),
    ] {
        let (ok, out) = check(&cfg, &[("https_proxy", url.as_str()), no_proxy]);
        assert!(ok, "{no_proxy:?}: {out}");
        assert!(
            out.contains(&format!(
                "direct ({} exempts it from the proxy); TLS peer",
                no_proxy.0
            )),
            "{out}"
        );
    }
    // Without NO_PROXY the same environment goes through the proxy.
    let (ok, out) = check(&cfg, &[("https_proxy", url.as_str())]);
    assert!(ok && out.contains("(https_proxy); TLS peer"), "{out}");
    let c = fake.counts();
    let tunnels = proxy.connects_to(&fake.endpoint());
    println!(
        "NO_PROXY: {} KMS calls over {} connections, {tunnels} of them through tinyproxy (the last check)",
        c.total(),
        c.connections
    );
    assert!(tunnels >= 1 && c.connections > tunnels as u64, "{c:?}");
    assert_eq!(proxy.requests().len(), tunnels, "{:?}", proxy.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_down_is_unavailable_then_recovers_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    let mut proxy = tinyproxy(ProxyOptions::new().connect_port(fake.addr().port()));
    let (cfg, socket) = config(
        &fake,
        dir.path(),
        json!({"KmsCaFile": ca, "KmsProxy": proxy.url(), "HealthAddr": "", "KmsTimeoutMs": 1000}),
    );
    let p = start(&cfg, &socket, &[]);
    round_trips(&fake, &socket, 2).await;

    tokio::task::block_in_place(|| proxy.stop());
    let before = fake.counts();
    let started = std::time::Instant::now();
    let e = remote_decrypt(&fake, &socket).await.unwrap_err();
    println!(
        "proxy down: {:?} after {:?}: {}",
        e.code(),
        started.elapsed(),
        e.message()
    );
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&format!(
            "cannot connect to proxy {} (KmsProxy)",
            proxy.host_port()
        )),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400 + 500),
        "{e:?}"
    );
    assert_eq!(
        fake.counts().total(),
        before.total(),
        "nothing went around the proxy"
    );
    let (ok, out) = check(&cfg, &[]);
    assert!(!ok && out.contains("cannot connect to proxy"), "{out}");

    tokio::task::block_in_place(|| proxy.restart());
    remote_decrypt(&fake, &socket)
        .await
        .expect("recovered once the proxy is back");
    let mut c = plugin::v2(&socket).await;
    let ct = v2_encrypt(&mut c, &[9; 32]).await.unwrap().ciphertext;
    assert_eq!(v2_decrypt(&mut c, &ct).await.unwrap(), [9; 32]);
    assert_eq!(p.stop().code(), Some(0));
    let counts = fake.counts();
    let tunnels = proxy.connects_to(&fake.endpoint());
    println!(
        "proxy down and back: {} KMS calls over {} connections; {tunnels} CONNECTs at tinyproxy (both runs)",
        counts.total(),
        counts.connections
    );
    assert_eq!(counts.connections, tunnels as u64, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_are_required_used_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_fake(dir.path(), |ca| ca.server(&["127.0.0.1"])).await;
    let password = "S3cret-proxy-pass";
    let proxy = tinyproxy(
        ProxyOptions::new()
            .connect_port(fake.addr().port())
            .basic_auth("svc-kms", password),
    );
    let secret_file = |name: &str, text: &str| {
        let f = dir.path().join(name);
        write_private(&f, text);
        f
    };
    let good = secret_file("proxy-good", &format!("svc-kms:{password}\n"));
    let wrong = secret_file("proxy-wrong", "svc-kms:not-the-password\n");
    let base =
        json!({"KmsCaFile": ca, "KmsProxy": proxy.url(), "HealthAddr": "", "DebugMode": true});
    let with = |extra: Value| {
        let mut v = base.clone();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };

    // Right credentials: calls go through, and the logs show none of them.
    let (cfg, socket) = config(
        &fake,
        dir.path(),
        with(json!({"KmsProxyCredentialsFile": good})),
    );
    let p = start(&cfg, &socket, &[]);
    round_trips(&fake, &socket, 3).await;
    let logs = p.logs();
    assert_eq!(p.stop().code(), Some(0));
    assert_no_secret(&logs, "svc-kms", password);
    let (ok, out) = check(&cfg, &[]);
    assert!(ok, "{out}");
    assert_no_secret(&out, "svc-kms", password);
    let c = fake.counts();
    assert_eq!(
        c.connections,
        proxy.connects_to(&fake.endpoint()) as u64,
        "{c:?}"
    );

    // No credentials: 407, `Unavailable` naming the proxy, not retried. Wrong ones: tinyproxy answers
    // 401 (not 407), which reaches us as a refused CONNECT; `Unavailable` naming the proxy and pointing
    // at the credentials file.
    let want_407 = format!(
        "proxy {} (KmsProxy) answered 407 Proxy Authentication Required to CONNECT {}: \
         no credentials were configured (KmsProxyCredentialsFile)",
        proxy.host_port(),
        fake.endpoint()
    );
    let want_refused = format!(
        "proxy {} (KmsProxy) refused CONNECT {} (its answer was not 200; if it refused the \
         credentials, check KmsProxyCredentialsFile)",
        proxy.host_port(),
        fake.endpoint()
    );
    for (extra, want, attempts) in [
        (json!({}), want_407, 1),
        (json!({"KmsProxyCredentialsFile": wrong}), want_refused, 3),
    ] {
        let (cfg, socket) = config(&fake, dir.path(), with(extra));
        let p = start(&cfg, &socket, &[]);
        let before = proxy.requests().len();
        let e = remote_decrypt(&fake, &socket).await.unwrap_err();
        println!("proxy auth: {:?} {}", e.code(), e.message());
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains(&want), "{e:?}");
        assert!(
            e.message().contains(&format!("after {attempts} attempt")),
            "{e:?}"
        );
        // (The plugin's start-up health probe may add its own CONNECTs.)
        assert!(
            proxy.requests().len() >= before + attempts,
            "{:?}",
            proxy.requests()
        );
        let logs = p.logs();
        drop(p);
        assert_no_secret(&logs, "svc-kms", password);
        assert_no_secret(&format!("{e:?}"), "svc-kms", password);
    }

    // Credentials inline in KmsProxy are a config error that names the field and shows no password.
    let inline = format!("http://svc-kms:{password}@{}", proxy.host_port());
    let (cfg, _) = config(&fake, dir.path(), with(json!({"KmsProxy": inline})));
    let (ok, out) = check(&cfg, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("field KmsProxy: credentials in the URL are not accepted"),
        "{out}"
    );
    assert_no_secret(&out, "svc-kms", password);
    // A credentials file others may read is refused, naming the field.
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (cfg, _) = config(
        &fake,
        dir.path(),
        with(json!({"KmsProxyCredentialsFile": good})),
    );
    let (ok, out) = check(&cfg, &[]);
    assert!(
        !ok && out.contains("field KmsProxyCredentialsFile"),
        "{out}"
    );
    assert_no_secret(&out, "svc-kms", password);
}

// ---- deploy/ ---------------------------------------------------------------------------------------

#[test]
fn deploy_shows_where_to_set_the_proxy_variables() {
    let read = |f: &str| std::fs::read_to_string(plugin::repo().join("deploy").join(f)).unwrap();
    // The static pod: the commented `env` list, uncommented, is valid YAML in the container and names
    // the proxy variables.
    let pod = read("static-pod.yaml");
    let mut uncommented = Vec::new();
    let mut in_env = false;
    for line in pod.lines() {
        if line == "      # env:" {
            in_env = true;
            uncommented.push("      env:".to_string());
        } else if in_env && line.starts_with("      #   ") {
            uncommented.push(line.replacen("# ", "", 1));
        } else {
            in_env = false;
            uncommented.push(line.to_string());
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(&uncommented.join("\n")).unwrap();
    let env = &docs[0]["spec"]["containers"][0]["env"];
    let names: Vec<&str> = env
        .as_vec()
        .expect("an env list once uncommented")
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"HTTPS_PROXY") && names.contains(&"NO_PROXY"),
        "{names:?}"
    );
    // The systemd unit: commented Environment= lines for the same variables.
    let unit = read("gm-kms-plugin.service");
    for var in ["HTTPS_PROXY", "NO_PROXY"] {
        assert!(
            unit.lines()
                .any(|l| l.starts_with("#   Environment=") && l.contains(&format!("={var}="))),
            "gm-kms-plugin.service shows no {var}"
        );
    }
}
