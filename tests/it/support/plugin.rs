//! Runs the real `gm-kms-plugin` binary on a real unix socket, and real gRPC clients (tonic) against it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gm_kms_plugin::proto::v1beta1::key_management_service_client::KeyManagementServiceClient as V1Client;
use gm_kms_plugin::proto::v2::key_management_service_client::KeyManagementServiceClient as V2Client;
use tonic::transport::Channel;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gm-kms-plugin")
}

/// Copies a key file of `keys/` into `dir` with mode 0600 (git checkouts make it 0644).
pub fn copy_key(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(repo().join("keys").join(name), &dst).expect("copy key");
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    dst
}

/// A fresh SM2 key made by the OpenSSL CLI, mode 0600.
pub fn openssl_key(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "SM2", "-out"])
        .arg(&dst)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    dst
}

/// Writes `config` as `dir/config.json`, mode 0600 (see [`write_private`]).
pub fn write_config(dir: &Path, config: &serde_json::Value) -> PathBuf {
    let path = dir.join("config.json");
    write_private(&path, serde_json::to_vec_pretty(config).expect("json"));
    path
}

/// Writes a file with mode 0600, as a config file that holds an inline `SecretKey` must be (the plugin
/// refuses one that group or others can read, as it refuses such a key file).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod file");
}

/// A plugin process.
pub struct Plugin {
    child: Option<Child>,
    pub socket: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
}

impl Plugin {
    /// Starts the binary with `config` (a file already written) and waits until the socket accepts.
    pub fn start(config: &Path, socket: &Path) -> Self {
        Self::start_with_env(config, socket, std::iter::empty::<(&str, &str)>())
    }

    /// [`Plugin::start`] with extra environment variables (e.g. a vendor library's settings).
    pub fn start_with_env<K, V>(
        config: &Path,
        socket: &Path,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let log = config.with_extension(format!(
            "{}.log",
            std::process::id() as u64 * 1000 + rand_suffix()
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary())
            .arg("-f")
            .arg(config)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("start plugin");
        let mut p = Plugin {
            child: Some(child),
            socket: socket.to_path_buf(),
            config: config.to_path_buf(),
            log,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("plugin exited early ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "plugin not ready:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// SIGKILL (no clean-up at all), then wait.
    pub fn kill9(mut self) -> ExitStatus {
        self.signal("KILL");
        self.wait()
    }

    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "plugin did not exit:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("rng");
    u64::from_le_bytes(b) % 1000
}

pub use gm_kms_testkit::client::uds_channel as channel;

/// A KMS v2 client over a unix socket.
pub type V2 = V2Client<Channel>;

/// v2 Encrypt of `plain`, as kube-apiserver sends it; the whole answer.
pub async fn v2_encrypt(
    c: &mut V2,
    plain: &[u8],
) -> Result<gm_kms_plugin::proto::v2::EncryptResponse, tonic::Status> {
    c.encrypt(gm_kms_plugin::proto::v2::EncryptRequest {
        plaintext: plain.to_vec(),
        uid: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

/// v2 Decrypt with kube-apiserver's default 3 s deadline; the plaintext.
pub async fn v2_decrypt(c: &mut V2, ct: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let mut req = tonic::Request::new(gm_kms_plugin::proto::v2::DecryptRequest {
        ciphertext: ct.to_vec(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(3));
    c.decrypt(req).await.map(|r| r.into_inner().plaintext)
}

pub async fn v1(socket: &Path) -> V1Client<Channel> {
    V1Client::new(channel(socket).await).max_decoding_message_size(16 << 20)
}

pub async fn v2(socket: &Path) -> V2Client<Channel> {
    V2Client::new(channel(socket).await).max_decoding_message_size(16 << 20)
}

/// A temp dir with the dev key and a config around it; `extra` fields are merged into the config.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
}

pub fn sm2_setup(extra: serde_json::Value) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = copy_key(dir.path(), "dev-sm2-key.pem");
    let socket = dir.path().join("run/kms.sock");
    let mut config = serde_json::json!({
        "Provider": "sm2",
        "Sm2PrivateKeyFile": key,
        "GRPCSocketPath": socket,
        "HealthAddr": "",
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let config = write_config(dir.path(), &config);
    Setup {
        dir,
        socket,
        config,
    }
}
