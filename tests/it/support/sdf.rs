//! The soft SDF device (crates/sdf-soft) for the `sdf` provider's tests: a key directory with its call log
//! and fault switches, configs that point the plugin at it, and plugin processes that see it in their
//! environment (the soft device reads `GM_SDF_SOFT_DIR` and `GM_SDF_SOFT_PROFILE` at `SDF_OpenDevice`).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gm_sdf::locate::{DIR_ENV, PROFILE_ENV};

use super::plugin::{Plugin, binary, openssl_key, write_config};

/// The access password the soft device expects for key 1 (`pin-1`).
pub const PIN: &str = "12345678";

/// The soft device's shared library, built on first use.
pub fn library() -> PathBuf {
    gm_sdf::locate::soft_device_library()
}

/// One soft device: its key directory (`sm2-enc-1.pem`, made by the OpenSSL CLI, and `pin-1`).
pub struct SoftDevice {
    pub dir: tempfile::TempDir,
    pub profile: &'static str,
}

impl SoftDevice {
    pub fn new(profile: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        openssl_key(dir.path(), "sm2-enc-1.pem");
        std::fs::write(dir.path().join("pin-1"), format!("{PIN}\n")).expect("write pin-1");
        Self { dir, profile }
    }

    /// The PEM file of the device key at `index` (what a backup of the key would be).
    pub fn key(&self, index: u32) -> PathBuf {
        self.dir.path().join(format!("sm2-enc-{index}.pem"))
    }

    /// The environment a process needs to open this device.
    pub fn env(&self) -> [(&'static str, std::ffi::OsString); 2] {
        [
            (DIR_ENV, self.dir.path().as_os_str().to_owned()),
            (PROFILE_ENV, self.profile.into()),
        ]
    }

    /// Every call the device saw so far: `<function> index=<i|-> rc=0x<code>`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many calls of `function` the device saw.
    pub fn count(&self, function: &str) -> usize {
        let prefix = format!("{function} ");
        self.calls()
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .count()
    }

    /// Turns a fault switch on (`fault-commfail`, `fault-slow-ms`, `fault-badlen`, `lockout-after`).
    pub fn set(&self, switch: &str, contents: &str) {
        std::fs::write(self.dir.path().join(switch), contents).expect("write switch");
    }

    /// Turns a fault switch off.
    pub fn clear(&self, switch: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(switch));
    }
}

/// Writes a 0600 file (a PIN file) into `dir`.
pub fn secret_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// The fields of an `sdf` key over `dev`'s key 1 with the right PIN (written to `dir/pin`).
pub fn sdf_key(dir: &Path, dev: &SoftDevice) -> serde_json::Value {
    let pin = secret_file(dir, "pin", &format!("{PIN}\n"));
    serde_json::json!({
        "Provider": "sdf",
        "SdfLibrary": library(),
        "SdfKeyIndex": 1,
        "SdfPinFile": pin,
        "SdfProfile": dev.profile,
    })
}

/// A config in `dir` whose primary key is `key` (a JSON object of key fields), plus `extra`; returns the
/// config and socket paths.
pub fn config(dir: &Path, key: serde_json::Value, extra: serde_json::Value) -> (PathBuf, PathBuf) {
    let socket = dir.join("run/kms.sock");
    let mut config = serde_json::json!({
        "GRPCSocketPath": socket,
        "HealthAddr": "",
    });
    for v in [key, extra] {
        if let (Some(c), Some(e)) = (config.as_object_mut(), v.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    (write_config(dir, &config), socket)
}

/// Starts the plugin with `config` and `dev`'s environment, so it can open the soft device.
pub fn start(config: &Path, socket: &Path, dev: &SoftDevice) -> Plugin {
    Plugin::start_with_env(config, socket, dev.env())
}

fn unique() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("rng");
    u64::from(std::process::id()) * 1000 + u64::from_le_bytes(b) % 1000
}

/// `gm-kms-plugin check -f config` with `dev`'s environment: success and the whole output.
pub fn check(config: &Path, dev: &SoftDevice) -> (bool, String) {
    let out = Command::new(binary())
        .arg("check")
        .arg("-f")
        .arg(config)
        .envs(dev.env())
        .output()
        .expect("run check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One v2 Decrypt with a `grpc-timeout` header, sent with `h2` directly: tonic's client enforces that
/// header itself and answers `Cancelled` at the same instant as the server, so this client, which has no
/// timer of its own, is how a test sees the server's answer. Returns the `grpc-status` (`4` is
/// DEADLINE_EXCEEDED) and how long the answer took.
pub async fn v2_decrypt_server_deadline(
    socket: &Path,
    ciphertext: &[u8],
    timeout: Duration,
) -> (String, Duration) {
    use prost::Message;
    let io = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let msg = gm_kms_plugin::proto::v2::DecryptRequest {
        ciphertext: ciphertext.to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len()).expect("short").to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/v2.KeyManagementService/Decrypt")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis()))
        .body(())
        .expect("request");
    let started = Instant::now();
    let mut client = client.ready().await.expect("h2 ready");
    let (response, mut stream) = client.send_request(req, false).expect("send");
    stream
        .send_data(bytes::Bytes::from(frame), true)
        .expect("send body");
    let response = response.await.expect("response");
    let (parts, mut body) = response.into_parts();
    // A trailers-only answer carries the status in the headers.
    if let Some(s) = parts.headers.get("grpc-status") {
        return (s.to_str().unwrap_or("?").to_owned(), started.elapsed());
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    (status, started.elapsed())
}
