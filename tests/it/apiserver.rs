//! Talking to kube-apiserver as it really calls (DESIGN §9): grpcio (C core, like grpc-go not tonic) with
//! every `:authority` form kube-apiserver versions send, abstract sockets, and a plugin that starts after
//! its client.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_stream::wrappers::UnixListenerStream;

use crate::support::plugin::{Plugin, copy_key, write_config};
use crate::support::python::kms_client;

/// What kube-apiserver does: v1 Version then the Encrypt("ping")/Decrypt health check; v2 Status, Encrypt
/// of a 32-byte DEK, Decrypt with the stored key_id.
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

fn percent_encode_path(p: &str) -> String {
    p.replace('/', "%2F")
}

#[test]
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
    // Readiness: an abstract socket has no file to wait for, so poll by connecting.
    let child = std::process::Command::new(crate::support::plugin::binary())
        .arg("-f")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
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

/// The problem is real: the same tonic services without the authority adapter fail every call that
/// carries the socket path as `:authority`, and work with `localhost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_adapter_socket_path_authority_fails() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let socket = dir.path().join("bare.sock");
    let config_path = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": ""}),
    );
    let config = gm_kms_plugin::config::Config::load(&config_path).unwrap();
    let plugin = gm_kms_plugin::plugin::Plugin::load(config).unwrap();
    let (v1, v2) = gm_kms_plugin::api::services(Arc::clone(&plugin));
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1)
            .add_service(v2)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
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
