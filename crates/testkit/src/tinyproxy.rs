//! Runs Debian's `tinyproxy` (a real, packaged HTTP forward proxy: `CONNECT` tunnels and absolute-form
//! requests) on `127.0.0.1`, each instance with its own generated config, log and port in a temp dir,
//! in the foreground (`tinyproxy -d -c <conf>`), as a child of the test.
//!
//! What went through it is read back from its log: every request line tinyproxy received
//! (`CONNECT 127.0.0.1:4431 HTTP/1.1`, `POST http://127.0.0.1:4431/v1/key/…:Encrypt HTTP/1.1`), one per
//! CONNECT tunnel or proxied plain-HTTP request, rejected ones (407) included.
//!
//! A missing or broken `tinyproxy` is a panic, never a skip: a proxy test that silently passes without a
//! proxy proves nothing. `.ci/run` installs it (`apt-get install tinyproxy`).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a tinyproxy instance is configured.
#[derive(Clone, Default)]
pub struct ProxyOptions {
    connect_ports: Vec<u16>,
    basic_auth: Option<(String, String)>,
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("connect_ports", &self.connect_ports)
            .field("basic_auth", &self.basic_auth.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ProxyOptions {
    /// No CONNECT port restriction, no authentication.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `CONNECT` to `port` (tinyproxy's `ConnectPort`); once one is named, only named ports are
    /// allowed.
    pub fn connect_port(mut self, port: u16) -> Self {
        self.connect_ports.push(port);
        self
    }

    /// Requires HTTP Basic proxy authentication with this user and password (tinyproxy's `BasicAuth`).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_string(), password.to_string()));
        self
    }
}

/// A running (or stopped) tinyproxy. Dropping it kills the process.
pub struct Tinyproxy {
    dir: tempfile::TempDir,
    options: ProxyOptions,
    port: u16,
    /// One log file per run (a restart writes a new one), oldest first.
    logs: Vec<PathBuf>,
    child: Option<Child>,
}

impl std::fmt::Debug for Tinyproxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tinyproxy")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Attempts at finding a port tinyproxy can listen on (another process may take the one picked).
const START_ATTEMPTS: u32 = 8;
/// How long one start may take until tinyproxy accepts connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

impl Tinyproxy {
    /// Starts tinyproxy on `127.0.0.1:<free port>`, retrying on another port if it cannot listen.
    ///
    /// # Panics
    /// If `tinyproxy` is not installed, or does not start within the attempts.
    pub fn start(options: ProxyOptions) -> Tinyproxy {
        let dir = tempfile::Builder::new()
            .prefix("tinyproxy-")
            .tempdir()
            .expect("temp dir for tinyproxy");
        let mut proxy = Tinyproxy {
            dir,
            options,
            port: 0,
            logs: Vec::new(),
            child: None,
        };
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            proxy.port = free_port();
            match proxy.spawn() {
                Ok(()) => return proxy,
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "tinyproxy did not start in {START_ATTEMPTS} attempts:\n{}",
            errors.join("\n---\n")
        );
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT` (for `KmsProxy` or `HTTPS_PROXY`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT`: how the plugin names the proxy in its messages.
    pub fn host_port(&self) -> String {
        self.addr().to_string()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process (connections are refused from now on; open tunnels are cut). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the proxy again on the same port with the same config (after [`Tinyproxy::stop`]).
    ///
    /// # Panics
    /// If it is running, or does not come back within 10 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "tinyproxy is running; stop it first");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("tinyproxy did not start again on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Every log line of every run, oldest first.
    pub fn log(&self) -> String {
        self.logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The request lines the proxy received, oldest first: `CONNECT host:port HTTP/1.1`, or a proxied
    /// plain-HTTP request line in absolute form.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("]: Request (file descriptor ")?;
                let (_, request) = rest.split_once("): ")?;
                Some(request.to_string())
            })
            .collect()
    }

    /// How many `CONNECT` requests named `target` (`host:port`).
    pub fn connects_to(&self, target: &str) -> usize {
        let prefix = format!("CONNECT {target} ");
        self.requests()
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .count()
    }

    /// How many absolute-form plain-HTTP requests went to `http://<target>/…`.
    pub fn http_requests_to(&self, target: &str) -> usize {
        let needle = format!(" http://{target}/");
        self.requests()
            .iter()
            .filter(|r| r.contains(&needle))
            .count()
    }

    /// Writes this run's config and starts tinyproxy; `Ok` once it accepts connections.
    fn spawn(&mut self) -> Result<(), String> {
        let run = self.logs.len() + 1;
        let log = self.dir.path().join(format!("tinyproxy-{run}.log"));
        let conf = self.dir.path().join(format!("tinyproxy-{run}.conf"));
        std::fs::write(&conf, self.config_text(&log))
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let out_path = self.dir.path().join(format!("tinyproxy-{run}.out"));
        let out = File::create(&out_path).expect("tinyproxy output file");
        let err = out.try_clone().expect("dup tinyproxy output file");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "tinyproxy is not installed: `apt-get install tinyproxy` (.ci/run installs it); \
                 the proxy tests need a real forward proxy and do not skip"
            ),
            Err(e) => panic!("cannot run tinyproxy: {e}"),
        };
        self.logs.push(log.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "tinyproxy on port {} exited ({status}):\n{}{}",
                    self.port,
                    read(&out_path),
                    read(&log)
                ));
            }
            if read(&log).contains("Starting main loop") && TcpStream::connect(self.addr()).is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "tinyproxy on port {} not ready within {START_TIMEOUT:?}:\n{}{}",
                    self.port,
                    read(&out_path),
                    read(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config_text(&self, log: &Path) -> String {
        let mut c = format!(
            "# generated by gm_kms_testkit::tinyproxy\n\
             Port {port}\n\
             Listen 127.0.0.1\n\
             Timeout 60\n\
             MaxClients 64\n\
             Allow 127.0.0.1\n\
             LogFile \"{log}\"\n\
             LogLevel Info\n",
            port = self.port,
            log = log.display()
        );
        for p in &self.options.connect_ports {
            c.push_str(&format!("ConnectPort {p}\n"));
        }
        if let Some((user, password)) = &self.options.basic_auth {
            c.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        c
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Sends `CONNECT target` (with `auth`, a `Proxy-Authorization` value) and returns the status line.
    fn connect(proxy: &Tinyproxy, target: &str, auth: Option<&str>) -> String {
        let mut s = TcpStream::connect(proxy.addr()).expect("proxy accepts");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        text.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn tunnels_counts_requires_auth_and_restarts_on_the_same_port() {
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let target_addr = target.local_addr().unwrap().to_string();
        let mut proxy = Tinyproxy::start(
            ProxyOptions::new()
                .connect_port(target.local_addr().unwrap().port())
                .basic_auth("u", "p"),
        );
        assert!(format!("{proxy:?} {:?}", proxy.options).contains("<set>"));
        assert!(connect(&proxy, &target_addr, None).contains(" 407 "));
        // base64("u:p")
        let ok = connect(&proxy, &target_addr, Some("Basic dTpw"));
        assert!(ok.contains(" 200 "), "{ok}");
        // A port not in ConnectPort is refused.
        let refused = connect(&proxy, "127.0.0.1:1", Some("Basic dTpw"));
        assert!(!refused.contains(" 200 "), "{refused}");
        assert_eq!(proxy.connects_to(&target_addr), 2, "{:?}", proxy.requests());
        assert_eq!(proxy.requests().len(), 3);

        let addr = proxy.addr();
        proxy.stop();
        assert!(!proxy.is_running());
        assert!(TcpStream::connect(addr).is_err(), "refused while stopped");
        proxy.restart();
        assert_eq!(proxy.addr(), addr);
        let ok = connect(&proxy, &target_addr, Some("Basic dTpw"));
        assert!(ok.contains(" 200 "), "{ok}");
        assert_eq!(proxy.connects_to(&target_addr), 3, "both runs are counted");
    }
}
