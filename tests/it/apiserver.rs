//! Talking to kube-apiserver as it really calls (DESIGN §9): every `:authority` form kube-apiserver
//! versions send, abstract sockets, and the same services without the authority adapter failing.
//!
//! The default tests send those forms with the frame-level HTTP/2 client of `support::rawh2` (no Rust
//! HTTP/2 library will send a socket path as `:authority`). The `live` module repeats them, and a plugin
//! that starts after its client, with grpcio (C core, like grpc-go, not tonic/h2) from the Python venv:
//! `scripts/test.sh` runs it in its live step.

use gm_kms_plugin::proto::{v1beta1, v2};
use tokio_stream::wrappers::UnixListenerStream;

use crate::support::plugin::{Plugin, copy_key, write_config};
use crate::support::rawh2::{Failure, RawH2};

const V1: &str = "/v1beta1.KeyManagementService/";
const V2: &str = "/v2.KeyManagementService/";

fn percent_encode_path(p: &str) -> String {
    p.replace('/', "%2F")
}

/// What kube-apiserver does, on one connection whose every request carries `authority`: v1 Version then
/// the Encrypt("ping")/Decrypt health check; v2 Status, Encrypt of a 32-byte DEK, Decrypt with the
/// stored key_id and annotations.
fn apiserver_flow(socket: &str, authority: Option<&str>, what: &str) {
    let mut c =
        RawH2::connect(socket, authority).unwrap_or_else(|e| panic!("{what}: connect: {e}"));

    let version: v1beta1::VersionResponse = call(
        &mut c,
        what,
        V1,
        "Version",
        v1beta1::VersionRequest {
            version: "v1beta1".into(),
        },
    );
    assert_eq!(version.version, "v1beta1", "{what}");
    let sealed: v1beta1::EncryptResponse = call(
        &mut c,
        what,
        V1,
        "Encrypt",
        v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: b"ping".to_vec(),
        },
    );
    let opened: v1beta1::DecryptResponse = call(
        &mut c,
        what,
        V1,
        "Decrypt",
        v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: sealed.cipher,
        },
    );
    assert_eq!(opened.plain, b"ping", "{what}");

    let status: v2::StatusResponse = call(&mut c, what, V2, "Status", v2::StatusRequest {});
    assert_eq!(status.version, "v2", "{what}");
    assert_eq!(status.healthz, "ok", "{what}: {status:?}");
    let sealed: v2::EncryptResponse = call(
        &mut c,
        what,
        V2,
        "Encrypt",
        v2::EncryptRequest {
            plaintext: vec![7; 32],
            uid: "u-1".into(),
        },
    );
    assert_eq!(sealed.key_id, status.key_id, "{what}");
    let opened: v2::DecryptResponse = call(
        &mut c,
        what,
        V2,
        "Decrypt",
        v2::DecryptRequest {
            ciphertext: sealed.ciphertext,
            uid: "u-2".into(),
            key_id: sealed.key_id,
            annotations: sealed.annotations,
        },
    );
    assert_eq!(opened.plaintext, [7u8; 32], "{what}");
}

/// One unary call of `service` (`V1` or `V2`) that must succeed.
fn call<Req, Resp>(c: &mut RawH2, what: &str, service: &str, method: &str, req: Req) -> Resp
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    c.call(&format!("{service}{method}"), &req)
        .unwrap_or_else(|e| panic!("{what}: {service}{method}: {e:?}"))
}

#[test]
fn every_authority_form_kube_apiserver_sends() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let socket = dir.path().join("kms-plugin.sock");
    let config = write_config(
        dir.path(),
        &serde_json::json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": ""}),
    );
    let _p = Plugin::start(&config, &socket);
    let path = socket.to_str().unwrap();
    let forms = [
        ("grpc-go < 1.57: raw socket path", Some(path.to_string())),
        (
            "grpc-go >= 1.57: percent-encoded path",
            Some(percent_encode_path(path)),
        ),
        (
            "Kubernetes >= 1.32 KMS v2: localhost",
            Some("localhost".to_string()),
        ),
        // What grpcio sends by default for unix:/tmp/k.sock: the path without its first slash, escaped.
        ("grpc-core default", Some(percent_encode_path(&path[1..]))),
        ("no :authority at all", None),
    ];
    // The first health round trip may still be running: Status must say "ok" within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut c = RawH2::connect(path, Some("localhost")).unwrap();
        let st: Result<v2::StatusResponse, _> =
            c.call(&format!("{V2}Status"), &v2::StatusRequest {});
        if st.is_ok_and(|s| s.healthz == "ok") || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (what, authority) in forms {
        apiserver_flow(path, authority.as_deref(), what);
    }
}

#[test]
fn abstract_socket() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let mut n = [0u8; 6];
    getrandom::fill(&mut n).unwrap();
    let name = format!("gm-kms-test-{}", hex::encode(n));
    let config = write_config(
        dir.path(),
        &serde_json::json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": format!("unix:///@{name}"), "HealthAddr": ""}),
    );
    let _guard = Kill(
        std::process::Command::new(crate::support::plugin::binary())
            .arg("-f")
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Readiness: an abstract socket has no file to wait for, so poll by connecting; then wait for the
    // first health round trip.
    let at = format!("@{name}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let healthy = RawH2::connect(&at, Some("localhost")).is_ok_and(|mut c| {
            c.call::<_, v2::StatusResponse>(&format!("{V2}Status"), &v2::StatusRequest {})
                .is_ok_and(|s| s.healthz == "ok")
        });
        if healthy {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "plugin on {at} never became healthy"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // kube-apiserver sends "@name" as :authority (v1 and v2 before 1.32), and localhost (v2, 1.32+).
    apiserver_flow(&at, Some(&at), "abstract socket, authority @name");
    apiserver_flow(
        &at,
        Some("localhost"),
        "abstract socket, authority localhost",
    );
}

/// The problem is real: the same tonic services without the authority adapter reset every call that
/// carries the socket path as `:authority`, and work with `localhost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_adapter_socket_path_authority_fails() {
    let (dir, socket, server) = bare_tonic("bare.sock");
    let path = socket.to_str().unwrap().to_string();
    let version = |authority: String| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = RawH2::connect(&path, Some(&authority))?;
            c.call::<_, v1beta1::VersionResponse>(
                &format!("{V1}Version"),
                &v1beta1::VersionRequest {
                    version: "v1beta1".into(),
                },
            )
        })
    };
    let bad = version(path.clone()).await.unwrap();
    let escaped = version(percent_encode_path(&path)).await.unwrap();
    let good = version("localhost".into()).await.unwrap();
    server.abort();
    drop(dir);
    // h2 resets a request it finds malformed with PROTOCOL_ERROR (1).
    assert!(
        matches!(bad, Err(Failure::Reset(1))),
        "bare tonic and a socket-path authority: {bad:?}"
    );
    assert!(
        matches!(escaped, Err(Failure::Reset(1))),
        "bare tonic and a percent-encoded authority: {escaped:?}"
    );
    assert_eq!(good.unwrap().version, "v1beta1");
    println!("without the adapter, authority={path}: {bad:?}");
}

/// The plugin's gRPC services served by plain tonic on `dir/<name>`, without the authority adapter.
fn bare_tonic(
    name: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let socket = dir.path().join(name);
    let config_path = write_config(
        dir.path(),
        &serde_json::json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": ""}),
    );
    let config = gm_kms_plugin::config::Config::load(&config_path).unwrap();
    let plugin = gm_kms_plugin::Plugin::load(config).unwrap();
    let (v1, v2) = gm_kms_plugin::services(plugin.backend());
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1)
            .add_service(v2)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    (dir, socket, server)
}

/// Kills and reaps a child process when dropped.
struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same with grpcio, and a plugin that starts after its client: needs the Python venv and the gRPC
/// stubs that `scripts/test.sh` makes; its live step runs these (`cargo test ... -- --ignored live::`).
mod live {
    use serde_json::{Value, json};

    use super::{Kill, bare_tonic, percent_encode_path};
    use crate::support::plugin::{Plugin, copy_key, write_config};
    use crate::support::python::kms_client;

    /// What kube-apiserver does: v1 Version then the Encrypt("ping")/Decrypt health check; v2 Status,
    /// Encrypt of a 32-byte DEK, Decrypt with the stored key_id.
    fn apiserver_calls() -> Value {
        json!([
            {"api": "v1", "method": "Version"},
            {"api": "v1", "method": "Encrypt", "plain": hex::encode(b"ping"), "ref": "ping"},
            {"api": "v1", "method": "Decrypt", "cipher_ref": "ping"},
            {"api": "v2", "method": "Status"},
            {"api": "v2", "method": "Encrypt", "plain": hex::encode([7u8; 32]), "ref": "dek"},
            {"api": "v2", "method": "Decrypt", "cipher_ref": "dek"},
        ])
    }

    fn assert_apiserver_flow(results: &[Value], what: &str) {
        for r in results {
            assert_eq!(r["ok"], true, "{what}: {r}");
        }
        assert_eq!(results[0]["version"], "v1beta1", "{what}");
        assert_eq!(results[2]["plain"], hex::encode(b"ping"), "{what}");
        assert_eq!(results[3]["version"], "v2", "{what}");
        assert_eq!(results[3]["healthz"], "ok", "{what}: {}", results[3]);
        assert_eq!(results[4]["key_id"], results[3]["key_id"], "{what}");
        assert_eq!(results[5]["plaintext"], hex::encode([7u8; 32]), "{what}");
    }

    #[test]
    #[ignore = "live oracle: needs the Python venv; scripts/test.sh runs it"]
    fn every_authority_form_kube_apiserver_sends() {
        let dir = tempfile::tempdir().unwrap();
        let key = copy_key(dir.path(), "dev-sm2-key.pem");
        let socket = dir.path().join("kms-plugin.sock");
        let config = write_config(
            dir.path(),
            &json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": ""}),
        );
        let _p = Plugin::start(&config, &socket);
        std::thread::sleep(std::time::Duration::from_millis(200)); // first health round trip
        let path = socket.to_str().unwrap();
        let forms = [
            ("grpc-go < 1.57: raw socket path", Some(path.to_string())),
            (
                "grpc-go >= 1.57: percent-encoded path",
                Some(percent_encode_path(path)),
            ),
            (
                "Kubernetes >= 1.32 KMS v2: localhost",
                Some("localhost".to_string()),
            ),
            ("grpcio default", None),
        ];
        for (what, authority) in forms {
            let results = kms_client(path, authority.as_deref(), &apiserver_calls());
            assert_apiserver_flow(&results, what);
        }
    }

    #[test]
    #[ignore = "live oracle: needs the Python venv; scripts/test.sh runs it"]
    fn abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let key = copy_key(dir.path(), "dev-sm2-key.pem");
        let mut n = [0u8; 6];
        getrandom::fill(&mut n).unwrap();
        let name = format!("gm-kms-test-{}", hex::encode(n));
        let config = write_config(
            dir.path(),
            &json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": format!("unix:///@{name}"), "HealthAddr": ""}),
        );
        let _guard = Kill(
            std::process::Command::new(crate::support::plugin::binary())
                .arg("-f")
                .arg(&config)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let at = format!("@{name}");
        // wait_for_ready in the client covers the start; kube-apiserver sends "@name" as :authority.
        let results = kms_client(&at, Some(&at), &apiserver_calls());
        assert_eq!(results[0]["ok"], true, "{}", results[0]);
        for r in &results[1..3] {
            assert_eq!(r["ok"], true, "{r}");
        }
        assert_eq!(results[2]["plain"], hex::encode(b"ping"));
        let v2_calls = Value::Array(apiserver_calls().as_array().unwrap()[4..6].to_vec());
        let results = kms_client(&at, Some("localhost"), &v2_calls);
        assert_eq!(results[1]["plaintext"], hex::encode([7u8; 32]));
    }

    #[test]
    #[ignore = "live oracle: needs the Python venv; scripts/test.sh runs it"]
    fn plugin_may_start_after_its_client() {
        let dir = tempfile::tempdir().unwrap();
        let key = copy_key(dir.path(), "dev-sm2-key.pem");
        let socket = dir.path().join("late.sock");
        let config = write_config(
            dir.path(),
            &json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": ""}),
        );
        let path = socket.to_str().unwrap().to_string();
        let client = std::thread::spawn(move || {
            kms_client(
                &path,
                Some(&path),
                &json!([{"api": "v1", "method": "Encrypt", "plain": "70696e67", "ref": "p", "deadline": 10},
                        {"api": "v1", "method": "Decrypt", "cipher_ref": "p"}]),
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(700));
        let _p = Plugin::start(&config, &socket);
        let results = client.join().unwrap();
        assert_eq!(results[0]["ok"], true, "{}", results[0]);
        assert_eq!(results[1]["plain"], "70696e67");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "live oracle: needs the Python venv; scripts/test.sh runs it"]
    async fn without_the_adapter_socket_path_authority_fails() {
        let (dir, socket, server) = bare_tonic("bare.sock");
        let path = socket.to_str().unwrap().to_string();
        let calls = json!([{"api": "v1", "method": "Version", "deadline": 2}]);
        let (bad, good) = tokio::task::spawn_blocking(move || {
            (
                kms_client(&path, Some(&path), &calls),
                kms_client(&path, Some("localhost"), &calls),
            )
        })
        .await
        .unwrap();
        server.abort();
        drop(dir);
        assert_eq!(
            bad[0]["ok"], false,
            "bare tonic accepted a socket-path authority: {}",
            bad[0]
        );
        assert_eq!(good[0]["ok"], true, "{}", good[0]);
        println!(
            "without the adapter, authority={}: {}",
            socket.display(),
            bad[0]
        );
    }
}
