//! Shared by the benchmark targets: running the plugin binary, measuring its memory, and a tonic
//! client over its unix socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_gm-kms-plugin");

// ---------------------------------------------------------------------------------------------------
// Processes under test

pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn wait_ready(child: Child, socket: &Path) -> (Proc, Duration) {
        let t = Instant::now();
        let mut p = Proc { child };
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return (p, t.elapsed());
            }
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!("server exited early: {s}");
            }
            assert!(t.elapsed() < Duration::from_secs(30), "server not ready");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (current RSS, peak RSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_plugin(config: &Path, socket: &Path) -> (Proc, Duration) {
    let child = Command::new(PLUGIN)
        .arg("-f")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start plugin");
    Proc::wait_ready(child, socket)
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn sm2_config(dir: &Path, name: &str, max_uses: u64) -> (PathBuf, PathBuf) {
    let key = dir.join("bench-key.pem");
    if !key.exists() {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/dev-sm2-key.pem"),
            &key,
        )
        .expect("key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let socket = dir.join(format!("{name}.sock"));
    let config = dir.join(format!("{name}.json"));
    let c = json!({"Sm2PrivateKeyFile": key, "GRPCSocketPath": socket, "HealthAddr": "", "DataKeyMaxUses": max_uses});
    write_private(&config, c.to_string());
    (config, socket)
}

/// Where the benchmarks write their JSON reports: `<target dir>/bench` (cargo's `CARGO_TARGET_TMPDIR` is
/// `<target dir>/tmp`), so under `CARGO_TARGET_DIR` when it is set, and never into the source tree.
pub fn report_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("bench")
}

/// Writes a file with mode 0600: a config file that holds an inline `SecretKey` must be owner-only.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

pub use gm_kms_testkit::client::uds_channel as channel;
