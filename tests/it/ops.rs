//! Operations: the HTTP side listener (`/livez`, `/healthz`, `/metrics`) of the real binary, metrics that
//! parse as Prometheus exposition and move with traffic, live rotation by SIGHUP under load, refused
//! reloads, a busy `HealthAddr`, and logs of a whole run that must hold no secret.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gm_kms_plugin::proto::{v1beta1, v2};
use gm_kms_plugin::provider::KeyProvider;
use gm_kms_testkit::fake_jdcloud::FakeJdCloud;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::load::{Load, wait_for_new_key_id};
use crate::support::plugin::{
    self, Plugin, V2, copy_key, openssl_key, v2_decrypt, v2_encrypt, write_config,
};

// ---------------------------------------------------------------------------------------------------
// Helpers: the health port, a tiny HTTP/1.1 client, a Prometheus/OpenMetrics text parser.

/// `HealthAddr` of the test plugins: port 0, so the plugin binds a port the kernel picks and keeps it. (A
/// port found free here and released for the plugin could be taken by another test in between.)
const ANY_PORT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

/// The address the plugin's health listener bound, read from its log line
/// `health listener serving http://ADDR/livez /healthz /metrics` (src/http.rs); waits up to 30 s.
async fn health_addr(p: &Plugin) -> SocketAddr {
    const MARK: &str = "health listener serving http://";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = p.logs().lines().find_map(|l| {
            let rest = l.get(l.find(MARK)? + MARK.len()..)?;
            rest.split('/').next()?.parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no {MARK:?} line in the plugin's log:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the plugin from a blocking-safe context (the fake JD Cloud runs on the test's runtime).
fn start(config: &Path, socket: &Path) -> Plugin {
    tokio::task::block_in_place(|| Plugin::start(config, socket))
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = accept {
        req.push_str(&format!("Accept: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    if method != "HEAD"
        && let Some(len) = headers.get("content-length")
    {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "Content-Length");
    }
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// GETs `path` until the answer has status `want` (the listener binds and the first probe runs in the
/// background); panics with the last answer after 30 s.
async fn wait_status(addr: SocketAddr, path: &str, want: u16, p: &Plugin) -> HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http(addr, "GET", path, None).await;
        match r {
            Ok(r) if r.status == want => return r,
            other => assert!(
                Instant::now() < deadline,
                "GET {path} never answered {want}; last: {other:?}\nlogs:\n{}",
                p.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the declared type of every metric family and every sample.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {v:?}")),
    }
}

/// Parses `name{label="value",…} value [timestamp]`.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = &line[..name_end];
    assert!(valid_metric_name(name), "bad metric name in {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let consumed;
        loop {
            if let Some(&(i, '}')) = chars.peek() {
                consumed = i + 1;
                break;
            }
            let start = chars.peek().map(|&(i, _)| i).expect("unterminated labels");
            let eq = r[start..]
                .find('=')
                .map(|e| start + e)
                .expect("label without =");
            let key = &r[start..eq];
            assert!(valid_label_name(key), "bad label name {key:?} in {line:?}");
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "unquoted label value in {line:?}"
            );
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            }
            assert!(
                labels.insert(key.to_string(), value).is_none(),
                "label {key} twice in {line:?}"
            );
            match chars.peek().map(|&(_, c)| c) {
                Some(',') => {
                    chars.next();
                }
                Some('}') => {}
                other => panic!("expected , or }} after a label, got {other:?} in {line:?}"),
            }
        }
        rest = &r[consumed..];
    }
    let rest = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap());
    if let Some(ts) = fields.next() {
        ts.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
    }
    assert!(fields.next().is_none(), "trailing fields in {line:?}");
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Parses the Prometheus text format 0.0.4 (`openmetrics = false`) or OpenMetrics 1.0 text, checking what
/// a scraper relies on: every line a comment or a sample, `TYPE` declared once per family before its
/// samples, sample names belonging to a declared family with a suffix its type allows, histogram buckets
/// cumulative with `+Inf` equal to `_count`, and (OpenMetrics) `# EOF` last.
fn parse_exposition(text: &str, openmetrics: bool) -> Exposition {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let mut types = BTreeMap::new();
    let mut helps = HashSet::new();
    let mut samples = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        assert!(!line.is_empty(), "empty line {i}");
        if let Some(rest) = line.strip_prefix("# ") {
            if rest == "EOF" {
                assert!(openmetrics, "# EOF in the Prometheus text format");
                assert_eq!(i, lines.len() - 1, "# EOF must be the last line");
                continue;
            }
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(valid_metric_name(name), "bad name in {line:?}");
            match kw {
                "HELP" => assert!(helps.insert(name.to_string()), "HELP twice for {name}"),
                "UNIT" => {
                    assert!(openmetrics, "# UNIT in the Prometheus text format");
                    let unit = parts.next().expect("a unit");
                    assert!(
                        name.ends_with(&format!("_{unit}")),
                        "{line:?}: name must end in its unit"
                    );
                }
                "TYPE" => {
                    let t = parts.next().expect("a type");
                    let allowed: &[&str] = if openmetrics {
                        &[
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "stateset",
                            "info",
                            "summary",
                            "unknown",
                        ]
                    } else {
                        &["counter", "gauge", "histogram", "summary", "untyped"]
                    };
                    assert!(allowed.contains(&t), "type {t:?} in {line:?}");
                    assert!(
                        !samples.iter().any(|s: &Sample| s.name.starts_with(name)),
                        "TYPE of {name} after its samples"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE twice for {name}"
                    );
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment {line:?}");
        let s = parse_sample(line);
        let family =
            family_of(&types, &s.name).unwrap_or_else(|| panic!("sample {:?} has no TYPE", s.name));
        let t = &types[&family];
        let suffix = &s.name[family.len()..];
        let ok = match (t.as_str(), openmetrics) {
            ("counter", true) => matches!(suffix, "_total" | "_created"),
            ("info", true) => suffix == "_info",
            ("histogram", _) => matches!(suffix, "_bucket" | "_sum" | "_count" | "_created"),
            (_, _) => suffix.is_empty(),
        };
        assert!(
            ok,
            "sample {} does not fit family {family} of type {t}",
            s.name
        );
        if t == "counter" {
            assert!(s.value >= 0.0, "negative counter {line:?}");
        }
        samples.push(s);
    }
    if openmetrics {
        assert_eq!(
            lines.last(),
            Some(&"# EOF"),
            "OpenMetrics text ends with # EOF"
        );
    }
    let e = Exposition { types, samples };
    check_histograms(&e);
    e
}

/// The declared family a sample belongs to.
fn family_of(types: &BTreeMap<String, String>, name: &str) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    ["_total", "_created", "_info", "_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suf| name.strip_suffix(suf))
        .find(|f| types.contains_key(*f))
        .map(str::to_string)
}

fn check_histograms(e: &Exposition) {
    for (family, t) in &e.types {
        if t != "histogram" {
            continue;
        }
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut key = s.labels.clone();
            let le = parse_value(&key.remove("le").expect("bucket without le"));
            series.entry(key).or_default().push((le, s.value));
        }
        for (labels, buckets) in series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{labels:?}: buckets not cumulative"
            );
            let (le, inf) = *buckets.last().unwrap();
            assert!(le.is_infinite(), "{family}{labels:?}: no +Inf bucket");
            let count = e
                .samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == labels)
                .expect("a _count")
                .value;
            assert_eq!(inf, count, "{family}{labels:?}: +Inf bucket != _count");
        }
    }
}

impl Exposition {
    /// The value of the sample named `name` whose labels include `labels`; 0 when absent (a counter series
    /// appears with its first increment). Panics if several match.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples",
            found.len()
        );
        found.first().map_or(0.0, |s| s.value)
    }

    fn find(&self, name: &str) -> Option<&Sample> {
        self.samples.iter().find(|s| s.name == name)
    }
}

/// Scrapes `/metrics` in the Prometheus text format and parses it.
async fn scrape(addr: SocketAddr) -> Exposition {
    let r = http(addr, "GET", "/metrics", None)
        .await
        .expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse_exposition(&r.body, false)
}

async fn key_id(c: &mut V2) -> String {
    c.status(v2::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .key_id
}

/// An SM2 config in `dir` serving on `dir/kms.sock` with the health listener on `addr`.
fn sm2_config(dir: &Path, key: &Path, addr: SocketAddr, extra: Value) -> (PathBuf, PathBuf) {
    let socket = dir.join("kms.sock");
    let mut config = json!({
        "Sm2PrivateKeyFile": key,
        "GRPCSocketPath": socket,
        "HealthAddr": addr.to_string(),
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    (write_config(dir, &config), socket)
}

// ---------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_metrics_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let (config, socket) = sm2_config(dir.path(), &key, ANY_PORT, json!({}));
    let p = start(&config, &socket);
    let addr = health_addr(&p).await;

    let live = wait_status(addr, "/livez", 200, &p).await;
    assert_eq!(live.body, "ok");
    assert_eq!(live.headers["content-type"], "text/plain; charset=utf-8");
    let ready = wait_status(addr, "/healthz", 200, &p).await;
    assert_eq!(ready.body, "ok");
    let head = http(addr, "HEAD", "/healthz", None).await.unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(http(addr, "GET", "/nope", None).await.unwrap().status, 404);
    let post = http(addr, "POST", "/metrics", None).await.unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");

    let before = scrape(addr).await;
    for family in [
        "gm_kms_reloads_total",
        "gm_kms_data_key_rotations_total",
        "gm_kms_data_key_cache_hits_total",
        "gm_kms_data_key_cache_misses_total",
        "gm_kms_data_key_cache_size",
        "gm_kms_data_key_current_uses",
        "gm_kms_data_key_wrap_failures_total",
        "gm_kms_degraded",
        "gm_kms_healthy",
        "gm_kms_build_info",
        "gm_kms_primary_key_info",
        "gm_kms_provider_calls_total",
        "gm_kms_provider_call_duration_seconds",
    ] {
        assert!(
            before.types.contains_key(family),
            "no TYPE for {family}: {:?}",
            before.types.keys()
        );
    }
    assert_eq!(before.value("gm_kms_healthy", &[]), 1.0);
    assert_eq!(before.value("gm_kms_degraded", &[]), 0.0);
    assert_eq!(
        before.value(
            "gm_kms_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    let mut c2 = plugin::v2(&socket).await;
    let mut c1 = plugin::v1(&socket).await;
    let status_key = key_id(&mut c2).await;
    let info = before
        .find("gm_kms_primary_key_info")
        .expect("primary key info");
    assert_eq!(info.labels["key_id"], status_key);
    assert_eq!(info.labels["provider"], "sm2");

    const ENCRYPTS: usize = 37;
    const DECRYPTS: usize = 11;
    let mut cts = Vec::new();
    for i in 0..ENCRYPTS {
        cts.push(
            v2_encrypt(&mut c2, format!("dek {i}").as_bytes())
                .await
                .unwrap()
                .ciphertext,
        );
    }
    for ct in &cts[..DECRYPTS] {
        v2_decrypt(&mut c2, ct).await.unwrap();
    }
    let bad = v2_decrypt(&mut c2, b"not a ciphertext").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let v1ct = c1
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: b"v1 dek".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .cipher;
    c1.decrypt(v1beta1::DecryptRequest {
        version: "v1beta1".into(),
        cipher: v1ct,
    })
    .await
    .unwrap();

    let after = scrape(addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let req = |api, method, code| [("api", api), ("method", method), ("code", code)];
    assert_eq!(
        delta("gm_kms_requests_total", &req("v2", "Encrypt", "OK")),
        ENCRYPTS as f64
    );
    assert_eq!(
        delta("gm_kms_requests_total", &req("v2", "Decrypt", "OK")),
        DECRYPTS as f64
    );
    assert_eq!(
        delta(
            "gm_kms_requests_total",
            &req("v2", "Decrypt", "InvalidArgument")
        ),
        1.0
    );
    assert_eq!(
        delta("gm_kms_requests_total", &req("v1", "Encrypt", "OK")),
        1.0
    );
    assert_eq!(
        delta("gm_kms_requests_total", &req("v1", "Decrypt", "OK")),
        1.0
    );
    assert!(delta("gm_kms_requests_total", &req("v2", "Status", "OK")) >= 1.0);
    assert_eq!(
        delta(
            "gm_kms_request_duration_seconds_count",
            &[("api", "v2"), ("method", "Encrypt")]
        ),
        ENCRYPTS as f64
    );
    assert!(
        after.value(
            "gm_kms_request_duration_seconds_sum",
            &[("api", "v2"), ("method", "Encrypt")]
        ) > 0.0
    );
    // One data key sealed every message (the policy allows a million), so uses count them all.
    assert_eq!(
        after.value("gm_kms_data_key_current_uses", &[]),
        (ENCRYPTS + 1) as f64
    );
    assert!(delta("gm_kms_data_key_rotations_total", &[]) >= 1.0);
    assert!(
        delta(
            "gm_kms_provider_calls_total",
            &[
                ("provider", "sm2"),
                ("operation", "wrap"),
                ("outcome", "ok")
            ]
        ) >= 1.0
    );
    // Every Decrypt that got past parsing looked its data key up in the cache.
    assert_eq!(
        delta("gm_kms_data_key_cache_hits_total", &[])
            + delta("gm_kms_data_key_cache_misses_total", &[]),
        (DECRYPTS + 1) as f64
    );
    assert!(after.value("gm_kms_data_key_cache_size", &[]) >= 1.0);

    // The same registry in OpenMetrics text, as Prometheus asks for it.
    let om = http(
        addr,
        "GET",
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await
    .unwrap();
    assert_eq!(
        om.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = parse_exposition(&om.body, true);
    assert_eq!(om.types["gm_kms_requests"], "counter");
    assert_eq!(om.types["gm_kms_primary_key"], "info");
    assert_eq!(om.types["gm_kms_request_duration_seconds"], "histogram");
    assert_eq!(
        om.value("gm_kms_requests_total", &req("v2", "Encrypt", "OK")),
        after.value("gm_kms_requests_total", &req("v2", "Encrypt", "OK"))
    );

    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_with_a_reason_when_the_jdcloud_key_is_disabled() {
    let fake = FakeJdCloud::start().await;
    fake.set_keys_enabled(false);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    let mut config: Value =
        serde_json::from_str(&fake.seed_config_json(socket.to_str().unwrap())).unwrap();
    config["HealthAddr"] = json!(ANY_PORT.to_string());
    let config = write_config(dir.path(), &config);
    let p = start(&config, &socket);
    let addr = health_addr(&p).await;

    // Not ready while starting, then not ready because the key refuses: wait for the second reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = wait_status(addr, "/healthz", 503, &p).await;
        if !r.body.contains("starting") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "first probe never ran:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!r.body.contains('\n'), "one line: {:?}", r.body);
    assert!(
        r.body.contains(&format!("jdcloud-{}", fake.key_id())),
        "{}",
        r.body
    );
    assert!(r.body.contains("refused"), "{}", r.body);
    assert!(!r.body.contains(fake.secret_key()) && !r.body.contains(fake.access_key()));
    // Liveness does not depend on the remote KMS: restarting would not fix it.
    assert_eq!(http(addr, "GET", "/livez", None).await.unwrap().status, 200);

    let m = scrape(addr).await;
    assert_eq!(m.value("gm_kms_healthy", &[]), 0.0);
    assert!(
        m.value(
            "gm_kms_provider_calls_total",
            &[
                ("provider", "jdcloud"),
                ("operation", "wrap"),
                ("outcome", "refused")
            ]
        ) >= 1.0
    );
    assert_eq!(
        m.value(
            "gm_kms_provider_calls_total",
            &[
                ("provider", "jdcloud"),
                ("operation", "wrap"),
                ("outcome", "ok")
            ]
        ),
        0.0
    );
    let info = m.find("gm_kms_primary_key_info").unwrap();
    assert_eq!(info.labels["provider"], "jdcloud");

    let mut c = plugin::v2(&socket).await;
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        st.healthz, r.body,
        "v2 Status and /healthz give the same answer"
    );
    assert!(
        p.logs().contains("key provider call failed"),
        "{}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotation_under_concurrent_load_fails_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let old = copy_key(dir.path(), "dev-sm2-key.pem");
    let new = openssl_key(dir.path(), "new.pem");
    let (config, socket) = sm2_config(dir.path(), &old, ANY_PORT, json!({}));
    let p = start(&config, &socket);
    let addr = health_addr(&p).await;
    let mut c = plugin::v2(&socket).await;
    let old_id = key_id(&mut c).await;
    let early = v2_encrypt(&mut c, b"sealed before the rotation")
        .await
        .unwrap();
    assert_eq!(early.key_id, old_id);

    let load = Load::start(&socket, 4).await;
    load.wait_ops(100).await;

    // The operator's rotation: new primary, old key decrypt-only, then SIGHUP; the socket never drops.
    sm2_config(
        dir.path(),
        &new,
        ANY_PORT,
        json!({"PreviousKeys": [{"Sm2PrivateKeyFile": old}]}),
    );
    p.signal("HUP");
    let new_id = wait_for_new_key_id(&mut c, &old_id, || p.logs()).await;
    load.wait_ops(load.ops() + 200).await;
    let all_ids = load.finish(|| p.logs()).await;
    assert!(
        all_ids.contains(&new_id),
        "no Encrypt after the rotation used the new key: {all_ids:?}"
    );
    assert!(
        all_ids.iter().all(|id| *id == old_id || *id == new_id),
        "{all_ids:?}"
    );
    assert_eq!(v2_encrypt(&mut c, b"after").await.unwrap().key_id, new_id);
    assert_eq!(
        v2_decrypt(&mut c, &early.ciphertext).await.unwrap(),
        b"sealed before the rotation"
    );

    let m = scrape(addr).await;
    assert_eq!(
        m.value("gm_kms_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        m.value("gm_kms_reloads_total", &[("result", "failure")]),
        0.0
    );
    assert_eq!(
        m.find("gm_kms_primary_key_info").unwrap().labels["key_id"],
        new_id
    );
    assert_eq!(m.value("gm_kms_keys", &[]), 2.0);
    let logs = p.logs();
    assert!(logs.contains("primary key rotated"), "{logs}");
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_old_config_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let (config, socket) = sm2_config(dir.path(), &key, ANY_PORT, json!({}));
    let p = start(&config, &socket);
    let addr = health_addr(&p).await;
    wait_status(addr, "/healthz", 200, &p).await;
    let mut c = plugin::v2(&socket).await;
    let id = key_id(&mut c).await;
    let ct = v2_encrypt(&mut c, b"kept").await.unwrap().ciphertext;

    let attempts: [&[u8]; 3] = [
        // An unknown field.
        br#"{"Sm2PrivateKeyFile": "k.pem", "Bogus": 1}"#,
        // Not JSON at all.
        b"{ truncated",
        // A valid config that moves HealthAddr, which a reload cannot do.
        &serde_json::to_vec(&json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": "127.0.0.1:1"})).unwrap(),
    ];
    for (n, text) in attempts.iter().enumerate() {
        std::fs::write(&config, text).unwrap();
        p.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = scrape(addr).await;
            if m.value("gm_kms_reloads_total", &[("result", "failure")]) == (n + 1) as f64 {
                assert_eq!(
                    m.value("gm_kms_reloads_total", &[("result", "success")]),
                    0.0
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reload {n} not counted:\n{}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The running config stays: same key, same listener, still sealing and opening.
        assert_eq!(key_id(&mut c).await, id);
        assert_eq!(v2_decrypt(&mut c, &ct).await.unwrap(), b"kept");
        v2_encrypt(&mut c, b"still sealing").await.unwrap();
        assert_eq!(
            http(addr, "GET", "/healthz", None).await.unwrap().status,
            200
        );
    }
    let logs = p.logs();
    assert_eq!(logs.matches("reload refused").count(), 3, "{logs}");
    assert!(logs.contains("Bogus"), "the error names the field: {logs}");
    assert!(logs.contains("HealthAddr"), "{logs}");
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_health_port_never_stops_the_kms_socket() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    let (config, socket) = sm2_config(dir.path(), &key, addr, json!({}));
    let p = start(&config, &socket);

    // The KMS socket serves although the health port is taken.
    let mut c = plugin::v2(&socket).await;
    let ct = v2_encrypt(&mut c, b"served").await.unwrap().ciphertext;
    assert_eq!(v2_decrypt(&mut c, &ct).await.unwrap(), b"served");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.logs().contains("cannot bind HealthAddr") {
        assert!(
            Instant::now() < deadline,
            "no bind error logged:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = p
        .logs()
        .lines()
        .find(|l| l.contains("cannot bind HealthAddr"))
        .unwrap()
        .to_string();
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    assert!(line.contains(&addr.to_string()), "{line}");

    // Once the port is free, the retry takes it.
    drop(squatter);
    let r = wait_status(addr, "/livez", 200, &p).await;
    assert_eq!(r.body, "ok");
    assert_eq!(v2_decrypt(&mut c, &ct).await.unwrap(), b"served");
    assert!(p.stop().success());
}

/// Waits until `needle` occurs `n` times in the plugin's log.
async fn wait_log_count(p: &Plugin, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.logs().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {n} times:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Five v2 Encrypt+Decrypt round trips of distinct 32-byte DEKs; records the DEKs and ciphertexts.
async fn traffic(c: &mut V2, tag: u8, deks: &mut Vec<Vec<u8>>, cts: &mut Vec<Vec<u8>>) {
    for i in 0..5u8 {
        let dek: Vec<u8> = (0..32u8)
            .map(|j| j.wrapping_mul(37).wrapping_add(i).wrapping_add(tag))
            .collect();
        let ct = v2_encrypt(c, &dek).await.unwrap().ciphertext;
        assert_eq!(v2_decrypt(c, &ct).await.unwrap(), dek);
        deks.push(dek);
        cts.push(ct);
    }
}

/// Spellings of secret bytes a careless log line could carry.
fn spellings(bytes: &[u8]) -> Vec<String> {
    let mut v = vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
        format!("{bytes:?}"),
        bytes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ];
    if let Ok(text) = std::str::from_utf8(bytes) {
        v.push(text.to_string());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_full_run_hold_no_key_or_credential() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sm2_key = copy_key(dir.path(), "dev-sm2-key.pem");
    let socket = dir.path().join("kms.sock");
    let jd_key = json!({
        "AccessKey": fake.access_key(), "SecretKey": fake.secret_key(), "KmsEndpoint": fake.endpoint(),
        "KmsKeyId": fake.key_id(), "KmsSchema": "http",
    });
    let with = |base: &Value, extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let common =
        json!({"GRPCSocketPath": socket, "HealthAddr": ANY_PORT.to_string(), "DebugMode": true});
    // 1. JD Cloud's config as it is (legacy reads on), plus the SM2 key decrypt-only, verbose logs.
    let config = write_config(
        dir.path(),
        &with(
            &with(&jd_key, common.clone()),
            json!({"PreviousKeys": [{"Sm2PrivateKeyFile": sm2_key}]}),
        ),
    );
    let p = start(&config, &socket);
    let addr = health_addr(&p).await;
    wait_status(addr, "/healthz", 200, &p).await;
    let mut c2 = plugin::v2(&socket).await;
    let mut c1 = plugin::v1(&socket).await;
    let mut deks: Vec<Vec<u8>> = Vec::new();
    let mut cts: Vec<Vec<u8>> = Vec::new();
    traffic(&mut c2, 0, &mut deks, &mut cts).await;
    let v1ct = c1
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: b"v1 payload secret".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .cipher;
    cts.push(v1ct.clone());
    deks.push(b"v1 payload secret".to_vec());
    // A ciphertext JD Cloud's own plugin wrote, read through the legacy path.
    let legacy_payload = b"legacy payload secret 0123456789".to_vec();
    let got = c1
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: fake.legacy_ciphertext(&legacy_payload),
        })
        .await
        .unwrap()
        .into_inner()
        .plain;
    assert_eq!(got, legacy_payload);
    scrape(addr).await;

    // 2. Rotate to the SM2 key; the JD Cloud key stays decrypt-only.
    write_config(
        dir.path(),
        &with(
            &common,
            json!({"Sm2PrivateKeyFile": sm2_key, "PreviousKeys": [with(&jd_key, json!({"Provider": "jdcloud", "LegacyCiphertexts": true}))]}),
        ),
    );
    p.signal("HUP");
    let sm2_id = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let id = key_id(&mut c2).await;
            if id.starts_with("sm2-") {
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "no rotation to SM2:\n{}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    traffic(&mut c2, 100, &mut deks, &mut cts).await;
    assert_eq!(v2_encrypt(&mut c2, b"x").await.unwrap().key_id, sm2_id);
    for (ct, dek) in cts.iter().zip(&deks) {
        assert_eq!(&v2_decrypt(&mut c2, ct).await.unwrap(), dek);
    }
    // A ciphertext whose wrapped data key was damaged: SM2 rejects it (a debug line under DebugMode).
    let mut damaged = cts.last().unwrap().clone();
    let n = usize::from(damaged[5]);
    let m = usize::from(u16::from_be_bytes([damaged[6 + n], damaged[7 + n]]));
    damaged[8 + n + m - 1] ^= 1;
    let e = v2_decrypt(&mut c2, &damaged).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // 3. A provider error: reload onto a disabled JD Cloud key (the wrap is refused and logged).
    fake.add_key("disabled-key-for-the-log-test");
    fake.set_key_status("disabled-key-for-the-log-test", 1);
    write_config(
        dir.path(),
        &with(
            &with(&jd_key, common.clone()),
            json!({"KmsKeyId": "disabled-key-for-the-log-test", "Provider": "jdcloud",
                   "PreviousKeys": [with(&jd_key, json!({"Provider": "jdcloud"})), {"Sm2PrivateKeyFile": sm2_key}]}),
        ),
    );
    p.signal("HUP");
    let disabled_id = "jdcloud-disabled-key-for-the-log-test".to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = |logs: String| {
        logs.lines().any(|l| {
            l.contains("WARN") && l.contains("key provider call failed") && l.contains(&disabled_id)
        })
    };
    while !refused(p.logs()) {
        // Encrypt drives a wrap under the new primary; its result does not matter here.
        let _ = v2_encrypt(&mut c2, b"drive a wrap").await;
        assert!(
            Instant::now() < deadline,
            "no provider error logged:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. Bad reloads, one of them carrying the credentials in the refused file.
    std::fs::write(
        &config,
        serde_json::to_vec(&with(
            &jd_key,
            json!({"Bogus": true, "GRPCSocketPath": socket}),
        ))
        .unwrap(),
    )
    .unwrap();
    p.signal("HUP");
    wait_log_count(&p, "reload refused", 1).await;
    let text = serde_json::to_string(&jd_key).unwrap();
    std::fs::write(&config, &text[..text.len() - 5]).unwrap();
    p.signal("HUP");
    wait_log_count(&p, "reload refused", 2).await;
    assert_eq!(key_id(&mut c2).await, disabled_id, "{}", p.logs());

    // 5. Shutdown (SIGTERM; the process is reaped when `p` drops).
    p.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.logs().contains("stopped") {
        assert!(Instant::now() < deadline, "no clean stop:\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logs = p.logs();

    // The lines an operator expects are there…
    for expected in [
        "serving KMS",
        "new data key in use",
        "key provider call failed",
        "primary key rotated",
        "reload refused",
        "SIGTERM",
        "stopped",
    ] {
        assert!(logs.contains(expected), "no {expected:?} line:\n{logs}");
    }
    assert!(
        logs.contains("DEBUG"),
        "DebugMode raises verbosity:\n{logs}"
    );

    // …and no secret is. Credentials of the fake:
    for secret in [fake.secret_key(), fake.access_key()] {
        assert!(!logs.contains(secret), "credential in the logs:\n{logs}");
    }
    // The private key, by any line of its PEM:
    let pem = std::fs::read_to_string(&sm2_key).unwrap();
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        assert!(!logs.contains(line), "private key PEM line in the logs");
    }
    // Every data key that sealed a message, and every payload:
    let sm2 = gm_kms_plugin::provider::sm2::Sm2Provider::load(&gm_kms_plugin::config::Sm2Spec {
        private_key_file: sm2_key.clone(),
        key_id: None,
    })
    .unwrap();
    let jd_spec = gm_kms_plugin::config::JdCloudSpec {
        access_key: gm_kms_plugin::SecretString::new(fake.access_key().into()),
        secret_key: gm_kms_plugin::SecretString::new(fake.secret_key().into()),
        endpoint: fake.endpoint(),
        key_id: fake.key_id().into(),
        schema: "http".into(),
        timeout: Duration::from_secs(2),
        sign_version: gm_kms_plugin::config::SignVersion::V3,
        legacy_ciphertexts: true,
        network: Default::default(),
    };
    let jd = gm_kms_plugin::provider::jdcloud::JdCloudProvider::new(&jd_spec).unwrap();
    let mut dks = HashSet::new();
    for ct in &cts {
        let parsed = gm_kms_plugin::ciphertext::parse(ct).unwrap();
        let dk = if parsed.kek_id == sm2.kek_id() {
            sm2.unwrap(parsed.wrapped_dk).await.unwrap()
        } else {
            assert_eq!(parsed.kek_id, jd.kek_id());
            jd.unwrap(parsed.wrapped_dk).await.unwrap()
        };
        dks.insert(dk.as_bytes().to_vec());
    }
    assert!(
        dks.len() >= 2,
        "data keys of both providers checked: {}",
        cts.iter()
            .map(|c| gm_kms_plugin::ciphertext::parse(c)
                .unwrap()
                .kek_id
                .to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for secret in dks.iter().chain(&deks).chain([&legacy_payload]) {
        for s in spellings(secret) {
            assert!(
                !logs.contains(&s),
                "secret bytes ({s}) in the logs:\n{logs}"
            );
        }
    }
}
