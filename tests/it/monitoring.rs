//! `deploy/monitoring/`: the Prometheus alerting rules and the Grafana dashboard load, are shaped as
//! Prometheus and Grafana read them, and every metric their queries name is on `/metrics` of a running
//! plugin (so a renamed metric cannot silently turn an alert or a panel blank).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::plugin::{self, Plugin, repo, sm2_setup, v2_decrypt, v2_encrypt};

const RULES: &str = "gm-kms-plugin-alerts.yaml";
const DASHBOARD: &str = "gm-kms-plugin-dashboard.json";

/// Series Prometheus makes itself for every target; no exporter serves them.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn monitoring(name: &str) -> PathBuf {
    repo().join("deploy/monitoring").join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(monitoring(name))
        .unwrap_or_else(|e| panic!("deploy/monitoring/{name}: {e}"))
}

/// The alerting rules as (alert name, expr, the whole rule).
fn alert_rules() -> Vec<(String, String, yaml_rust2::Yaml)> {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read(RULES))
        .unwrap_or_else(|e| panic!("{RULES}: not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{RULES}: one document");
    let groups = docs[0]["groups"].as_vec().expect("groups: a list");
    assert!(!groups.is_empty());
    let mut out = Vec::new();
    for g in groups {
        assert!(g["name"].as_str().is_some(), "every group has a name");
        for r in g["rules"].as_vec().expect("rules: a list") {
            let name = r["alert"]
                .as_str()
                .expect("alerting rules only")
                .to_string();
            let expr = r["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: expr"))
                .to_string();
            out.push((name, expr, r.clone()));
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: not JSON: {e}"))
}

/// Every PromQL `expr` of the dashboard (panels, rows' panels) and the metric of each `label_values`
/// query of its variables.
fn dashboard_queries(d: &Value) -> (Vec<String>, BTreeSet<String>) {
    fn walk(v: &Value, exprs: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    exprs.push(e.clone());
                }
                m.values().for_each(|v| walk(v, exprs));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&d["panels"], &mut exprs);
    let mut metrics = BTreeSet::new();
    for var in d["templating"]["list"].as_array().expect("templating.list") {
        let q = match &var["query"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        if let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        {
            let metric = args.split(',').next().unwrap().trim();
            metrics.insert(metric.split('{').next().unwrap().to_string());
        }
    }
    (exprs, metrics)
}

/// The metric names a PromQL expression reads: identifiers outside label matchers, ranges and strings
/// that are not functions, aggregations, keywords or grouping label lists.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let b = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match (brackets inside strings ignored).
    let skip = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'"' | b'\'') => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {} in {expr}", open as char)
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        match b[i] {
            b'{' => i = skip(i, b'{', b'}'),
            b'[' => i = skip(i, b'[', b']'),
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // A variable (`$instance`, `$__rate_interval`) or a number (`0.99`, `1e-9`).
            c if c == b'$' || c.is_ascii_digit() || c == b'.' => {
                i += 1;
                while i < b.len()
                    && (ident(b[i]) || b[i] == b'.' || b[i] == b'-' && b[i - 1] == b'e')
                {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let call = j < b.len() && b[j] == b'(';
                if GROUPING.contains(&word) {
                    if call {
                        i = skip(j, b'(', b')');
                    }
                } else if call || KEYWORDS.contains(&word) || AGGREGATIONS.contains(&word) {
                    // A function, aggregation or keyword.
                } else {
                    out.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn promql_metric_names_are_found() {
    assert_eq!(
        promql_metrics(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(gm_kms_x_bucket{a=~"b|c", d!="{"}[$__rate_interval]))) / clamp_min(up{job="j"} + 1e-9, 1) and on (instance) time() - process_start_time_seconds offset 5m"#
        ),
        BTreeSet::from([
            "gm_kms_x_bucket".to_string(),
            "up".to_string(),
            "process_start_time_seconds".to_string()
        ])
    );
}

#[test]
fn alerting_rules_are_complete() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names.len(), rules.len(), "alert names are unique");
    // What issue 14 asks an operator to be told about, each by a rule on the metric that says it.
    for (what, metric) in [
        ("plugin down", "up"),
        ("health failing", "gm_kms_healthy"),
        ("provider errors", "gm_kms_provider_calls_total"),
        ("data key past policy", "gm_kms_degraded"),
        ("reload failures", "gm_kms_reloads_total"),
        ("legacy reads still happening", "gm_kms_legacy_reads_total"),
    ] {
        assert!(
            rules
                .iter()
                .any(|(_, e, _)| promql_metrics(e).contains(metric)),
            "no alert for {what} ({metric})"
        );
    }
    for (name, expr, r) in &rules {
        assert!(
            name.starts_with("GmKms") && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "{name}"
        );
        let severity = r["labels"]["severity"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: labels.severity"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: {severity}"
        );
        for a in ["summary", "description"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: annotations.{a}"
            );
        }
        if let Some(f) = r["for"].as_str() {
            assert!(
                f.ends_with(['s', 'm', 'h']) && f[..f.len() - 1].parse::<u32>().is_ok(),
                "{name}: for {f}"
            );
        }
        assert!(!promql_metrics(expr).is_empty(), "{name}: {expr}");
    }
}

#[test]
fn dashboard_is_an_importable_grafana_dashboard() {
    let d = dashboard();
    assert_eq!(d["uid"], "gm-kms-plugin");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some());
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"instance"),
        "{vars:?}"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel ids unique"
        );
        let g = &p["gridPos"];
        for k in ["x", "y", "w", "h"] {
            assert!(g[k].as_u64().is_some(), "{}: gridPos.{k}", p["title"]);
        }
        assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{}: targets", p["title"]);
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
                let e = t["expr"].as_str().expect("expr");
                assert!(
                    e.contains("$instance"),
                    "{}: not filtered by $instance: {e}",
                    p["title"]
                );
            }
        }
    }
}

/// The sample names of a Prometheus text exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// `GET path` on the plugin's health listener, the body.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to HealthAddr");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The address the health listener bound (`HealthAddr` port 0), from its log line (src/http.rs).
fn health_addr(p: &Plugin) -> SocketAddr {
    const MARK: &str = "health listener serving http://";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(a) = p.logs().lines().find_map(|l| {
            let rest = l.get(l.find(MARK)? + MARK.len()..)?;
            rest.split('/').next()?.parse().ok()
        }) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no health listener:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_name_is_on_metrics() {
    let s = sm2_setup(json!({"HealthAddr": "127.0.0.1:0"}));
    let p = tokio::task::block_in_place(|| Plugin::start(&s.config, &s.socket));
    let addr = tokio::task::block_in_place(|| health_addr(&p));
    // Traffic, so that every labelled family has a series: requests, provider wrap/unwrap, a failure.
    let mut c = plugin::v2(&s.socket).await;
    let ct = v2_encrypt(&mut c, b"monitoring").await.unwrap().ciphertext;
    assert_eq!(v2_decrypt(&mut c, &ct).await.unwrap(), b"monitoring");
    assert!(v2_decrypt(&mut c, b"not a ciphertext").await.is_err());
    let text = tokio::task::block_in_place(|| get(addr, "/metrics"));
    let served = sample_names(&text);

    let mut named: Vec<(String, String)> = Vec::new();
    for (alert, expr, _) in alert_rules() {
        named.extend(
            promql_metrics(&expr)
                .into_iter()
                .map(|m| (format!("{RULES}: {alert}"), m)),
        );
    }
    let d = dashboard();
    let (exprs, variables) = dashboard_queries(&d);
    for e in &exprs {
        named.extend(
            promql_metrics(e)
                .into_iter()
                .map(|m| (format!("{DASHBOARD}: {e}"), m)),
        );
    }
    named.extend(
        variables
            .into_iter()
            .map(|m| (format!("{DASHBOARD}: variable"), m)),
    );
    assert!(named.len() > 20, "{named:?}");
    let missing: Vec<&(String, String)> = named
        .iter()
        .filter(|(_, m)| !served.contains(m) && !PROMETHEUS_OWN.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics named in deploy/monitoring/ but not on /metrics: {missing:#?}\n/metrics:\n{text}"
    );
    // The process metrics are there beside the plugin's own.
    for m in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(served.contains(m), "{m} missing:\n{text}");
    }
}
