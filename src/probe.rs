//! `gm-kms-plugin status`: talks to a running plugin over its socket the way kube-apiserver does — v1beta1
//! `Version`, v2 `Status`, one v2 Encrypt/Decrypt round trip, one v1beta1 round trip — prints what it saw,
//! and fails on anything kube-apiserver would refuse or that does not round-trip.
//!
//! The checks are kube-apiserver's own (k8s.io/apiserver `encryptionconfig/config.go`,
//! `envelope/kmsv2/envelope.go`): v1 `Version.version` must be `v1beta1`; v2 `Status` must say
//! `healthz: "ok"`, a known `version` and a non-empty `key_id`; v2 Encrypt's `key_id` must equal
//! `Status.key_id`, and its ciphertext and key id must be 1..=1024 bytes; a v1 ciphertext must fit the
//! 2-byte length kube-apiserver stores it behind. Each call has kube-apiserver's default deadline (3 s).

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::SocketSpec;
use crate::proto::v1beta1::key_management_service_client::KeyManagementServiceClient as V1Client;
use crate::proto::v2::key_management_service_client::KeyManagementServiceClient as V2Client;
use crate::proto::{v1beta1, v2};

/// kube-apiserver's default per-call timeout for a KMS plugin.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// What the probe seals: a DEK-sized random plaintext, as kube-apiserver sends.
const PROBE_LEN: usize = 32;
/// KMS v2 limits on what Encrypt returns (`kmsv2/envelope.go`).
const V2_MAX_CIPHERTEXT: usize = 1024;
const V2_MAX_KEY_ID: usize = 1024;
/// KMS v1 stores the ciphertext behind a 2-byte length.
const V1_MAX_CIPHERTEXT: usize = 65535;

/// Why `status` failed: one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// The socket does not answer.
    #[error("cannot connect to the plugin at {socket}: {reason}")]
    Connect {
        /// The socket.
        socket: String,
        /// Why.
        reason: String,
    },
    /// `--socket` is not a socket address.
    #[error("--socket {0:?}: {1}")]
    BadSocket(String, &'static str),
    /// It answered, but not as kube-apiserver needs: the first problem, and how many more the report
    /// above the verdict shows.
    #[error("plugin at {socket}: {}{}", problems.first().map_or("", String::as_str), more(problems.len()))]
    Problems {
        /// The socket.
        socket: String,
        /// One entry per failed check.
        problems: Vec<String>,
    },
}

fn more(problems: usize) -> String {
    match problems.saturating_sub(1) {
        0 => String::new(),
        n => format!(" (and {n} more above)"),
    }
}

/// A `--socket` value as `GRPCSocketPath` takes it: a path, `unix://PATH`, or `@name` / `unix:///@name`
/// for an abstract socket.
pub(crate) fn parse_socket(s: &str) -> Result<SocketSpec, ProbeError> {
    let bare = s.strip_prefix("unix://").unwrap_or(s);
    if let Some(name) = bare.strip_prefix('@').or_else(|| bare.strip_prefix("/@")) {
        if name.is_empty() {
            return Err(ProbeError::BadSocket(
                s.into(),
                "empty abstract socket name",
            ));
        }
        return Ok(SocketSpec::Abstract(name.into()));
    }
    if bare.is_empty() {
        return Err(ProbeError::BadSocket(s.into(), "empty path"));
    }
    Ok(SocketSpec::Path(PathBuf::from(bare)))
}

/// Probes the plugin at `socket`, writing one line per step to `out`, then one verdict line — `OK`, or
/// `FAILED: ` and every problem (what the error says too) — as `check` does.
pub(crate) async fn run(socket: &SocketSpec, out: &mut dyn Write) -> Result<(), ProbeError> {
    let result = probe(socket, out).await;
    let _ = match &result {
        Ok(()) => writeln!(out, "OK"),
        Err(e) => writeln!(out, "FAILED: {e}"),
    };
    let _ = out.flush();
    result
}

async fn probe(socket: &SocketSpec, out: &mut dyn Write) -> Result<(), ProbeError> {
    let shown = socket.to_string();
    let started = Instant::now();
    let channel = connect(socket)
        .await
        .map_err(|reason| ProbeError::Connect {
            socket: shown.clone(),
            reason,
        })?;
    let mut p = Probe {
        out,
        problems: Vec::new(),
    };
    p.line(format!(
        "socket {shown}: connected ({})",
        ms(started.elapsed())
    ));
    let mut v1 = V1Client::new(channel.clone());
    let mut v2 = V2Client::new(channel);

    // v1beta1 Version, as kube-apiserver asks once before using a v1 plugin.
    match call(v1.version(req(v1beta1::VersionRequest {
        version: "v1beta1".into(),
    })))
    .await
    {
        Ok((r, t)) => {
            let seen = format!(
                "version {}, runtime {} {} ({})",
                r.version,
                r.runtime_name,
                r.runtime_version,
                ms(t)
            );
            if r.version == "v1beta1" {
                p.line(format!("v1beta1 Version: {seen}"));
            } else {
                p.fail_saw(
                    "v1beta1 Version",
                    format!("version {:?}, kube-apiserver needs v1beta1", r.version),
                    &seen,
                );
            }
        }
        Err(e) => p.fail("v1beta1 Version", e),
    }

    // v2 Status, as kube-apiserver polls it.
    let status_key_id = match call(v2.status(req(v2::StatusRequest {}))).await {
        Ok((r, t)) => {
            let mut wrong = Vec::new();
            if r.healthz != "ok" {
                wrong.push(format!("healthz is {:?}, not \"ok\"", r.healthz));
            }
            if r.version != "v2" && r.version != "v2beta1" {
                wrong.push(format!("version {:?} is neither v2 nor v2beta1", r.version));
            }
            if r.key_id.is_empty() || r.key_id.len() > V2_MAX_KEY_ID {
                wrong.push(format!("key_id must be 1..={V2_MAX_KEY_ID} bytes"));
            }
            if wrong.is_empty() {
                p.line(format!(
                    "v2 Status: version {}, healthz ok, key_id {} ({})",
                    r.version,
                    r.key_id,
                    ms(t)
                ));
            } else {
                let seen = format!("version {}, key_id {} ({})", r.version, r.key_id, ms(t));
                p.fail_saw("v2 Status", wrong.join(", "), &seen);
            }
            Some(r.key_id)
        }
        Err(e) => {
            p.fail("v2 Status", e);
            None
        }
    };

    // One v2 round trip: Encrypt a fresh DEK-sized plaintext, Decrypt it with what kube-apiserver stores.
    let plain = random_plaintext();
    match call(v2.encrypt(req(v2::EncryptRequest {
        plaintext: plain.clone(),
        uid: uid(),
    })))
    .await
    {
        Ok((r, t)) => {
            let seen = format!(
                "{} bytes of ciphertext for {PROBE_LEN} bytes, key_id {} ({})",
                r.ciphertext.len(),
                r.key_id,
                ms(t)
            );
            let mut wrong = Vec::new();
            if r.ciphertext.is_empty() || r.ciphertext.len() > V2_MAX_CIPHERTEXT {
                wrong.push(format!(
                    "the ciphertext must be 1..={V2_MAX_CIPHERTEXT} bytes"
                ));
            }
            if r.key_id.is_empty() || r.key_id.len() > V2_MAX_KEY_ID {
                wrong.push(format!("key_id must be 1..={V2_MAX_KEY_ID} bytes"));
            }
            if let Some(s) = &status_key_id
                && *s != r.key_id
            {
                wrong.push(format!(
                    "key_id {} differs from Status key_id {s} (kube-apiserver refuses the write)",
                    r.key_id
                ));
            }
            if wrong.is_empty() {
                p.line(format!("v2 Encrypt: {seen}"));
            } else {
                p.fail_saw("v2 Encrypt", wrong.join(", "), &seen);
            }
            let decrypt = v2.decrypt(req(v2::DecryptRequest {
                ciphertext: r.ciphertext,
                uid: uid(),
                key_id: r.key_id,
                annotations: r.annotations,
            }));
            p.round_trip(
                "v2 Decrypt",
                &plain,
                call(decrypt).await.map(|(d, t)| (d.plaintext, t)),
            );
        }
        Err(e) => {
            p.fail("v2 Encrypt", e);
            p.line("v2 Decrypt: skipped (no ciphertext)".into());
        }
    }

    // One v1beta1 round trip (kube-apiserver's v1 health check is Encrypt then Decrypt).
    let plain = random_plaintext();
    match call(v1.encrypt(req(v1beta1::EncryptRequest {
        version: "v1beta1".into(),
        plain: plain.clone(),
    })))
    .await
    {
        Ok((r, t)) => {
            let seen = format!(
                "{} bytes of ciphertext for {PROBE_LEN} bytes ({})",
                r.cipher.len(),
                ms(t)
            );
            if r.cipher.is_empty() || r.cipher.len() > V1_MAX_CIPHERTEXT {
                p.fail_saw(
                    "v1beta1 Encrypt",
                    format!("the ciphertext must be 1..={V1_MAX_CIPHERTEXT} bytes"),
                    &seen,
                );
            } else {
                p.line(format!("v1beta1 Encrypt: {seen}"));
            }
            let decrypt = v1.decrypt(req(v1beta1::DecryptRequest {
                version: "v1beta1".into(),
                cipher: r.cipher,
            }));
            p.round_trip(
                "v1beta1 Decrypt",
                &plain,
                call(decrypt).await.map(|(d, t)| (d.plain, t)),
            );
        }
        Err(e) => {
            p.fail("v1beta1 Encrypt", e);
            p.line("v1beta1 Decrypt: skipped (no ciphertext)".into());
        }
    }

    if p.problems.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::Problems {
            socket: shown,
            problems: p.problems,
        })
    }
}

struct Probe<'a> {
    out: &'a mut dyn Write,
    problems: Vec<String>,
}

impl Probe<'_> {
    /// A line of what was seen. Output is best effort: a closed stdout must not hide the verdict.
    fn line(&mut self, line: String) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn fail(&mut self, step: &str, why: String) {
        self.line(format!("{step}: FAILED: {why}"));
        self.problems.push(format!("{step}: {why}"));
    }

    /// A failed check of an answer: why, then what the answer was.
    fn fail_saw(&mut self, step: &str, why: String, saw: &str) {
        self.line(format!("{step}: FAILED: {why}; it answered {saw}"));
        self.problems.push(format!("{step}: {why}"));
    }

    fn round_trip(&mut self, step: &str, sent: &[u8], got: Result<(Vec<u8>, Duration), String>) {
        match got {
            Ok((back, t)) if back == sent => self.line(format!(
                "{step}: the same {} bytes back ({})",
                sent.len(),
                ms(t)
            )),
            Ok((back, _)) => self.fail(
                step,
                format!(
                    "{} bytes back that differ from the {} bytes sent",
                    back.len(),
                    sent.len()
                ),
            ),
            Err(e) => self.fail(step, e),
        }
    }
}

fn req<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// One call under the deadline; the answer and how long it took, or the failure in words.
async fn call<T>(
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(T, Duration), String> {
    let started = Instant::now();
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Err(_) => Err(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
        Ok(Err(status)) => {
            let mut s = format!("{:?}", status.code());
            if !status.message().is_empty() {
                let _ = write!(s, ": {}", status.message().replace('\n', " "));
            }
            Err(s)
        }
        Ok(Ok(r)) => Ok((r.into_inner(), started.elapsed())),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn random_plaintext() -> Vec<u8> {
    let mut b = vec![0u8; PROBE_LEN];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut b);
    b
}

/// A fresh request uid, as kube-apiserver sends (a random UUID).
fn uid() -> String {
    let mut b = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut b);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// Connects once, then hands that connection to tonic (plaintext HTTP/2, `:authority` `localhost`, the
/// form kube-apiserver 1.32+ sends on v2). Connecting first gives a plain error for a missing socket.
async fn connect(socket: &SocketSpec) -> Result<Channel, String> {
    let stream = tokio::time::timeout(CALL_TIMEOUT, connect_stream(socket))
        .await
        .map_err(|_| format!("no connection within {} s", CALL_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    let slot = Arc::new(Mutex::new(Some(stream)));
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(CALL_TIMEOUT);
    let connector = tower::service_fn(move |_: Uri| {
        let stream = slot.lock().ok().and_then(|mut s| s.take());
        async move {
            stream
                .map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("connection lost; not reconnecting"))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(c) = source {
                let _ = write!(s, ": {c}");
                source = c.source();
            }
            s
        })
}

async fn connect_stream(socket: &SocketSpec) -> std::io::Result<tokio::net::UnixStream> {
    match socket {
        SocketSpec::Path(path) => tokio::net::UnixStream::connect(path).await,
        SocketSpec::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            s.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_forms() {
        assert_eq!(
            parse_socket("/run/kms.sock").unwrap(),
            SocketSpec::Path("/run/kms.sock".into())
        );
        assert_eq!(
            parse_socket("unix:///run/kms.sock").unwrap(),
            SocketSpec::Path("/run/kms.sock".into())
        );
        assert_eq!(
            parse_socket("unix:///@kms").unwrap(),
            SocketSpec::Abstract("kms".into())
        );
        assert_eq!(
            parse_socket("@kms").unwrap(),
            SocketSpec::Abstract("kms".into())
        );
        assert!(parse_socket("").is_err());
        assert!(parse_socket("@").is_err());
    }

    #[tokio::test]
    async fn no_socket_is_one_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SocketSpec::Path(dir.path().join("none.sock"));
        let mut out = Vec::new();
        let e = run(&spec, &mut out).await.unwrap_err().to_string();
        assert!(e.starts_with("cannot connect to the plugin at "), "{e}");
        assert!(e.contains("No such file or directory"), "{e}");
        assert_eq!(String::from_utf8(out).unwrap(), format!("FAILED: {e}\n"));
    }
}
