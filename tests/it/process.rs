//! Process faults: kill -9 and SIGTERM in the middle of load, and socket paths that cannot be used.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gm_kms_plugin::proto::v2;
use serde_json::json;
use tokio::sync::Mutex;

use crate::support::plugin::{
    self, Plugin, binary, copy_key, sm2_setup, v2_decrypt, v2_encrypt, write_config,
};

/// Plaintext and ciphertext of every message sealed so far.
type Sealed = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// Several clients seal continuously until `stop`; every ciphertext returned is kept with its plaintext.
fn spawn_load(
    socket: &std::path::Path,
    clients: usize,
    stop: Arc<AtomicBool>,
    sealed: Sealed,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..clients)
        .map(|t| {
            let (socket, stop, sealed) = (socket.to_path_buf(), stop.clone(), sealed.clone());
            tokio::spawn(async move {
                let mut c = plugin::v2(&socket).await;
                let mut failures = 0;
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("client {t} message {i}").into_bytes();
                    i += 1;
                    match c
                        .encrypt(v2::EncryptRequest {
                            plaintext: msg.clone(),
                            uid: String::new(),
                        })
                        .await
                    {
                        Ok(r) => sealed.lock().await.push((msg, r.into_inner().ciphertext)),
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                failures
            })
        })
        .collect()
}

async fn decrypt_all(socket: &std::path::Path, sealed: &[(Vec<u8>, Vec<u8>)]) {
    let mut c = plugin::v2(socket).await;
    for (msg, ct) in sealed {
        let pt = v2_decrypt(&mut c, ct).await.unwrap();
        assert_eq!(&pt, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_then_restart_everything_written_still_decrypts() {
    let s = sm2_setup(json!({"DataKeyMaxUses": 50}));
    let p = tokio::task::block_in_place(|| Plugin::start(&s.config, &s.socket));
    let stop = Arc::new(AtomicBool::new(false));
    let sealed = Arc::new(Mutex::new(Vec::new()));
    let load = spawn_load(&s.socket, 4, stop.clone(), sealed.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::task::block_in_place(|| p.kill9());
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(s.socket.exists(), "kill -9 leaves the socket file");
    let _p = tokio::task::block_in_place(|| Plugin::start(&s.config, &s.socket));
    let sealed = sealed.lock().await.clone();
    assert!(
        sealed.len() > 10,
        "only {} calls before the kill",
        sealed.len()
    );
    println!(
        "kill -9 after {} sealed messages; all decrypt after restart",
        sealed.len()
    );
    decrypt_all(&s.socket, &sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_cleanly() {
    let s = sm2_setup(json!({}));
    let p = tokio::task::block_in_place(|| Plugin::start(&s.config, &s.socket));
    let stop = Arc::new(AtomicBool::new(false));
    let sealed = Arc::new(Mutex::new(Vec::new()));
    let load = spawn_load(&s.socket, 4, stop.clone(), sealed.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::block_in_place(|| p.stop());
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM under load"
    );
    assert!(!s.socket.exists(), "socket removed");
    // Every answer given before the stop was a good one.
    let sealed = sealed.lock().await.clone();
    let _p = tokio::task::block_in_place(|| Plugin::start(&s.config, &s.socket));
    decrypt_all(&s.socket, &sealed).await;
}

#[test]
fn unusable_socket_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let socket = file.join("kms.sock");
    let config = write_config(
        dir.path(),
        &json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": ""}),
    );
    let out = std::process::Command::new(binary())
        .arg("-f")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a-file") && err.contains("cannot create directory"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// 100 connections dropped abruptly mid-call leave the plugin serving (no leaked state blocks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abruptly_dropped_connections_do_not_hurt() {
    let s = sm2_setup(json!({}));
    let p = tokio::task::block_in_place(|| Plugin::start(&s.config, &s.socket));
    for _ in 0..100 {
        let socket = s.socket.clone();
        let call = tokio::spawn(async move {
            let mut c = plugin::v2(&socket).await;
            let _ = c
                .encrypt(v2::EncryptRequest {
                    plaintext: vec![1; 32],
                    uid: String::new(),
                })
                .await;
        });
        tokio::time::sleep(Duration::from_micros(300)).await;
        call.abort();
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", p.pid()))
        .unwrap()
        .count();
    let mut c = plugin::v2(&s.socket).await;
    let ct = v2_encrypt(&mut c, b"still here").await.unwrap().ciphertext;
    decrypt_all(&s.socket, &[(b"still here".to_vec(), ct)]).await;
    println!("open fds after 100 dropped connections: {fds}");
    assert!(fds < 64, "{fds} open file descriptors");
}
