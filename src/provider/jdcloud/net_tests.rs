//! Route decisions (`KmsProxy`, the proxy variables, `NO_PROXY` matching), TLS trust set-up and the
//! peer certificate reader. The real TLS server and the real proxy are in tests/it/jdcloud_net.rs.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::config::{ProxyCredentials, ProxySpec};
use crate::secret::SecretString;
use gm_kms_testkit::pki::TestCa;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

fn route(scheme: &str, endpoint: &str, env: &[(&str, &str)]) -> Result<Route, String> {
    decide_route(scheme, endpoint, None, &env_of(env))
}

/// `Some(host:port of the proxy, its source)` or `None` for a direct route.
fn via(r: &Route) -> Option<(String, String)> {
    match r {
        Route::Proxy(p) => Some((p.host_port.clone(), p.source.to_string())),
        Route::Direct { .. } => None,
    }
}

#[test]
fn no_variables_no_proxy() {
    let r = route("https", "kms.cn-north-1.jdcloud-api.com", &[]).unwrap();
    assert!(via(&r).is_none());
    assert_eq!(r.to_string(), "direct");
}

#[test]
fn https_endpoints_use_https_proxy_upper_case_first() {
    let r = route(
        "https",
        "kms.cn-north-1.jdcloud-api.com",
        &[
            ("HTTPS_PROXY", "http://proxy.corp:3128"),
            ("https_proxy", "http://other:1"),
        ],
    )
    .unwrap();
    assert_eq!(
        via(&r),
        Some(("proxy.corp:3128".into(), "HTTPS_PROXY".into()))
    );
    let r = route(
        "https",
        "kms.example",
        &[("https_proxy", "http://lower:8080")],
    )
    .unwrap();
    assert_eq!(via(&r), Some(("lower:8080".into(), "https_proxy".into())));
    // An empty upper-case value does not hide the lower-case one.
    let r = route(
        "https",
        "kms.example",
        &[("HTTPS_PROXY", " "), ("https_proxy", "http://lower:8080")],
    )
    .unwrap();
    assert_eq!(via(&r), Some(("lower:8080".into(), "https_proxy".into())));
    // HTTP_PROXY is for http endpoints only; ALL_PROXY is not read (as Go).
    let r = route(
        "https",
        "kms.example",
        &[("HTTP_PROXY", "http://p:1"), ("ALL_PROXY", "http://p:2")],
    )
    .unwrap();
    assert!(via(&r).is_none());
    // No scheme means http, no port means 80 (as curl and Go).
    let r = route(
        "https",
        "kms.example",
        &[("HTTPS_PROXY", "proxy.corp:3128")],
    )
    .unwrap();
    assert_eq!(via(&r).unwrap().0, "proxy.corp:3128");
    let r = route(
        "https",
        "kms.example",
        &[("HTTPS_PROXY", "http://proxy.corp")],
    )
    .unwrap();
    assert_eq!(via(&r).unwrap().0, "proxy.corp:80");
}

#[test]
fn http_endpoints_use_http_proxy_except_under_cgi() {
    let r = route(
        "http",
        "kms.internal.example",
        &[("HTTP_PROXY", "http://p:3128")],
    )
    .unwrap();
    assert_eq!(via(&r), Some(("p:3128".into(), "HTTP_PROXY".into())));
    let r = route(
        "http",
        "kms.internal.example",
        &[("http_proxy", "http://p:3128")],
    )
    .unwrap();
    assert_eq!(via(&r), Some(("p:3128".into(), "http_proxy".into())));
    let r = route(
        "http",
        "kms.internal.example",
        &[("HTTPS_PROXY", "http://p:3128")],
    )
    .unwrap();
    assert!(via(&r).is_none());
    let r = route(
        "http",
        "kms.internal.example",
        &[("HTTP_PROXY", "http://p:3128"), ("REQUEST_METHOD", "GET")],
    )
    .unwrap();
    assert!(via(&r).is_none(), "httpoxy: HTTP_PROXY ignored under CGI");
}

#[test]
fn no_proxy_matching_follows_curl_and_go() {
    let p = ("HTTPS_PROXY", "http://proxy:3128");
    let bypassed = |endpoint: &str, no: &str| {
        let r = route("https", endpoint, &[p, ("NO_PROXY", no)]).unwrap();
        match r {
            Route::Direct { bypassed_by } => {
                assert_eq!(bypassed_by, Some("NO_PROXY"));
                true
            }
            Route::Proxy(_) => false,
        }
    };
    // Domain suffixes, with or without the leading dot, match the domain and its subdomains.
    assert!(bypassed(
        "kms.cn-north-1.jdcloud-api.com",
        "jdcloud-api.com"
    ));
    assert!(bypassed(
        "kms.cn-north-1.jdcloud-api.com",
        ".jdcloud-api.com"
    ));
    assert!(bypassed("jdcloud-api.com", ".jdcloud-api.com"));
    assert!(bypassed("jdcloud-api.com", "jdcloud-api.com"));
    assert!(!bypassed("kms.notjdcloud-api.com", "jdcloud-api.com"));
    assert!(!bypassed("kms.example", "jdcloud-api.com"));
    // Case does not matter; entries are comma-separated with spaces allowed.
    assert!(bypassed("KMS.Example.COM", "other.org, example.com"));
    // Exact IP addresses and CIDR blocks; the endpoint's port is not compared.
    assert!(bypassed("10.0.0.7:8443", "10.0.0.7"));
    assert!(!bypassed("10.0.0.8:8443", "10.0.0.7"));
    assert!(bypassed("10.0.0.8:8443", "10.0.0.0/24"));
    assert!(bypassed("[::1]:8443", "::1"));
    assert!(bypassed("127.0.0.1:4431", "localhost,127.0.0.1"));
    // `*` matches everything, IP addresses too.
    assert!(bypassed("kms.example", "*"));
    assert!(bypassed("127.0.0.1:4431", "*"));
    assert!(bypassed("127.0.0.1:4431", "127.0.0.0/8"));
    assert!(bypassed("127.0.0.1:4431", " other.example , * "));
    // Lower-case no_proxy when NO_PROXY is unset.
    let r = route("https", "kms.example", &[p, ("no_proxy", "kms.example")]).unwrap();
    assert!(matches!(
        r,
        Route::Direct {
            bypassed_by: Some("no_proxy")
        }
    ));
    assert_eq!(r.to_string(), "direct (no_proxy exempts it from the proxy)");
}

#[test]
fn unusable_proxy_variables_are_config_errors_without_credentials() {
    let e = route(
        "https",
        "kms.example",
        &[("HTTPS_PROXY", "socks5://user:pw-SECRET@p:1080")],
    )
    .unwrap_err();
    assert!(e.contains("HTTPS_PROXY") && e.contains("socks5"), "{e}");
    assert!(!e.contains("pw-SECRET"), "{e}");
    let e = route(
        "https",
        "kms.example",
        &[("HTTPS_PROXY", "https://user:pw-SECRET@p:443")],
    )
    .unwrap_err();
    assert!(e.contains("http://"), "{e}");
    assert!(!e.contains("pw-SECRET"), "{e}");
    let e = route("https", "kms.example", &[("https_proxy", "http://a b")]).unwrap_err();
    assert!(e.contains("https_proxy"), "{e}");
}

#[test]
fn credentials_in_a_proxy_variable_become_a_redacted_basic_header() {
    let r = route(
        "https",
        "kms.example",
        &[("HTTPS_PROXY", "http://alice:pw-SECRET@proxy:3128")],
    )
    .unwrap();
    let Route::Proxy(p) = &r else {
        panic!("expected a proxy route")
    };
    assert_eq!(p.host_port(), "proxy:3128");
    let auth = p.auth().expect("basic auth");
    assert!(auth.is_sensitive());
    // base64("alice:pw-SECRET")
    assert_eq!(auth.to_str().unwrap(), "Basic YWxpY2U6cHctU0VDUkVU");
    for shown in [format!("{r:?}"), r.to_string()] {
        assert!(
            !shown.contains("pw-SECRET") && !shown.contains("YWxpY2U6") && !shown.contains("alice"),
            "{shown}"
        );
    }
}

#[test]
fn kms_proxy_wins_over_the_environment_and_ignores_no_proxy() {
    let spec = ProxySpec {
        url: "http://egress.corp:8080".into(),
        credentials: Some(ProxyCredentials {
            user: SecretString::new("svc-kms".into()),
            password: SecretString::new("pw-SECRET".into()),
        }),
    };
    let r = decide_route(
        "https",
        "kms.example",
        Some(&spec),
        &env_of(&[("HTTPS_PROXY", "http://other:1"), ("NO_PROXY", "*")]),
    )
    .unwrap();
    let Route::Proxy(p) = &r else {
        panic!("expected a proxy route")
    };
    assert_eq!(p.host_port(), "egress.corp:8080");
    assert_eq!(r.to_string(), "via proxy egress.corp:8080 (KmsProxy)");
    assert_eq!(
        p.auth().unwrap().to_str().unwrap(),
        "Basic c3ZjLWttczpwdy1TRUNSRVQ="
    );
    assert!(!format!("{r:?}").contains("pw-SECRET"));
    // The same for an http endpoint.
    let r = decide_route("http", "kms.internal", Some(&spec), &env_of(&[])).unwrap();
    assert!(matches!(r, Route::Proxy(_)));
}

#[test]
fn ca_file_problems_name_the_field_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let net = |file: &std::path::Path, only: bool| KmsNetwork {
        proxy: None,
        ca_file: Some(file.to_path_buf()),
        ca_file_only: only,
    };
    let missing = dir.path().join("absent.pem");
    let e = tls_config(&net(&missing, false)).unwrap_err();
    assert!(e.contains("KmsCaFile") && e.contains("absent.pem"), "{e}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = tls_config(&net(&empty, true)).unwrap_err();
    assert!(
        e.contains("KmsCaFile") && e.contains("no PEM certificate"),
        "{e}"
    );
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = tls_config(&net(&broken, true)).unwrap_err();
    assert!(e.contains("KmsCaFile") && e.contains("broken.pem"), "{e}");
    // A good bundle of two CAs, world-readable (it is no secret).
    let good = dir.path().join("bundle.pem");
    let (a, b) = (TestCa::new("CA one"), TestCa::new("CA two"));
    std::fs::write(&good, format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = tls_config(&net(&good, true)).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert!(tls_config(&net(&good, false)).is_ok());
    assert!(tls_config(&KmsNetwork::default()).is_ok());
}

#[test]
fn peer_certificate_shows_subject_issuer_and_expiry() {
    let ca = TestCa::new("gm-kms test CA");
    let leaf = ca.server(&["kms.example.test", "127.0.0.1"]);
    let peer = TlsPeer::from_der(leaf.chain[0].as_ref()).unwrap();
    assert!(peer.subject.contains("CN=kms.example.test"), "{peer}");
    assert!(peer.issuer.contains("CN=gm-kms test CA"), "{peer}");
    let year = leaf.not_after.year().to_string();
    assert!(
        peer.not_after.starts_with(&year) && peer.not_after.ends_with('Z'),
        "{peer}"
    );
    assert!(TlsPeer::from_der(b"garbage").is_err());
}

/// `Config::parse` of a jdcloud config with `extra` fields, at `dir/config.json`.
fn parse_in(dir: &std::path::Path, extra: &str) -> Result<crate::config::KmsNetwork, String> {
    let text = format!(
        r#"{{"AccessKey": "ak", "SecretKey": "sk", "KmsEndpoint": "kms.example", "KmsKeyId": "k"{extra}}}"#
    );
    let c =
        crate::config::Config::parse(&text, &dir.join("config.json")).map_err(|e| e.to_string())?;
    match c.primary {
        crate::config::KeySpec::JdCloud(j) => Ok(j.network),
        other => panic!("expected jdcloud, got {other:?}"),
    }
}

#[test]
fn config_fields_parse_and_errors_name_the_field_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let d = dir.path();
    // Absent: the environment decides, system roots.
    assert_eq!(parse_in(d, "").unwrap(), KmsNetwork::default());
    // KmsProxy, normalised; relative paths are relative to the config file.
    let creds = d.join("proxy-creds");
    std::fs::write(&creds, "svc-kms:pw-SECRET:with-colon\n").unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let n = parse_in(
        d,
        r#", "KmsProxy": "http://egress.corp:3128/", "KmsProxyCredentialsFile": "proxy-creds",
            "KmsCaFile": "ca/bundle.pem", "KmsCaFileOnly": true"#,
    )
    .unwrap();
    let proxy = n.proxy.clone().unwrap();
    assert_eq!(proxy.url, "http://egress.corp:3128");
    let c = proxy.credentials.unwrap();
    assert_eq!(
        (c.user.expose(), c.password.expose()),
        ("svc-kms", "pw-SECRET:with-colon")
    );
    assert_eq!(
        n.ca_file.as_deref(),
        Some(d.join("ca/bundle.pem").as_path())
    );
    assert!(n.ca_file_only);
    assert!(!format!("{n:?}").contains("pw-SECRET"), "{n:?}");

    let bad: &[(&str, &str)] = &[
        (
            r#", "KmsProxy": "http://svc:pw-SECRET@egress:3128""#,
            "field KmsProxy: credentials in the URL",
        ),
        (
            r#", "KmsProxy": "https://egress:3128""#,
            "field KmsProxy: must start with http://",
        ),
        (r#", "KmsProxy": "socks5://egress:1080""#, "field KmsProxy"),
        (
            r#", "KmsProxy": "http://egress""#,
            "field KmsProxy: needs a host and a port",
        ),
        (
            r#", "KmsProxy": "http://egress:3128/path""#,
            "field KmsProxy: must be http://host:port",
        ),
        (r#", "KmsProxy": "egress:3128""#, "field KmsProxy"),
        (r#", "KmsProxy": 3128"#, "KmsProxy"),
        (
            r#", "KmsProxyCredentialsFile": "proxy-creds""#,
            "field KmsProxyCredentialsFile needs KmsProxy",
        ),
        (
            r#", "KmsProxy": "http://e:1", "KmsProxyCredentialsFile": "absent""#,
            "field KmsProxyCredentialsFile",
        ),
        (
            r#", "KmsCaFileOnly": true"#,
            "field KmsCaFileOnly: true needs KmsCaFile",
        ),
        (
            r#", "KmsSchema": "http", "KmsCaFile": "ca.pem""#,
            "field KmsCaFile applies to KmsSchema \"https\" only",
        ),
        (r#", "KmsCaFileOnly": "yes""#, "KmsCaFileOnly"),
    ];
    for (extra, want) in bad {
        let e = parse_in(d, extra).unwrap_err();
        assert!(e.contains(want), "{extra}: {e}");
        assert!(!e.contains("pw-SECRET"), "{e}");
    }
    // A credentials file that is not one `user:password` line, or that others may read.
    for (text, mode) in [
        ("no-colon\n", 0o600),
        (":no-user\n", 0o600),
        ("two:lines\nmore:here\n", 0o600),
        ("svc:pw-SECRET\n", 0o644),
    ] {
        std::fs::write(&creds, text).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = parse_in(
            d,
            r#", "KmsProxy": "http://e:1", "KmsProxyCredentialsFile": "proxy-creds""#,
        )
        .unwrap_err();
        assert!(e.contains("field KmsProxyCredentialsFile"), "{text:?}: {e}");
        assert!(!e.contains("pw-SECRET") && !e.contains("more:here"), "{e}");
    }
    // The network fields belong to jdcloud keys only.
    let e = crate::config::Config::parse(
        r#"{"Sm2PrivateKeyFile": "k.pem", "KmsProxy": "http://e:1"}"#,
        &d.join("config.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("field KmsProxy does not apply to Provider \"sm2\""),
        "{e}"
    );
}
