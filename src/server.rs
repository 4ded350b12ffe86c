//! The unix socket: binding it safely (DESIGN §7) and serving both KMS APIs on it until shutdown.
//!
//! - A stale socket file is removed only when nothing answers on it; a live one, or a path that is not a
//!   socket (a regular file, a directory), is an error and is never deleted.
//! - The parent directory is created; the socket is made `0600` (kube-apiserver runs as root).
//! - Every accepted connection passes the peer check (`SO_PEERCRED` uid in `AllowedPeerUids`) and the
//!   connection cap before a byte is read ([`accept`]), then through [`gm_kms_authority::normalize`], so
//!   kube-apiserver's socket-path `:authority` is accepted (DESIGN §9).
//! - Abstract sockets (`@name`) have no file and need none of the above; a name another process already
//!   holds stops the start (possible squatting), and the peer check is their only access control.
//! - Streams, connections, message size, header size and the time to the HTTP/2 preface are bounded
//!   (the constants below and in [`accept`]; docs/reliability.md, "The local attacker: the KMS socket").

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

use std::time::Duration;

use tokio::net::UnixListener;

use crate::api::Backend;
use crate::config::SocketSpec;

mod accept;

pub(crate) use accept::PeerPolicy;

/// How long shutdown waits for in-flight calls before giving up on them.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest gRPC message received or sent, protobuf bytes. What kube-apiserver sends is small: a KMS v2
/// Decrypt carries a ciphertext of at most 1 KiB plus at most 32 KiB of annotations (Kubernetes' own cap),
/// a v1 Encrypt a 32-byte data key, a v1 Decrypt one of our ciphertexts (~250 bytes for a DEK). 64 KiB
/// fits all of them with room to spare; tonic's default, 4 MiB, let one stalled stream hold 4 MiB.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// HTTP/2 streams (calls in flight) per connection (SETTINGS_MAX_CONCURRENT_STREAMS); grpc-go queues
/// calls beyond it instead of failing them.
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Largest request header list (SETTINGS_MAX_HEADER_LIST_SIZE), as the `:authority` adapter caps a
/// header block; a KMS request's headers take a few hundred bytes.
pub(crate) const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 flow-control windows: one whole message fits a stream's window; the connection's bounds the
/// request bytes buffered for one connection that tonic has not read yet.
const STREAM_WINDOW: u32 = 128 * 1024;
const CONNECTION_WINDOW: u32 = 512 * 1024;
/// HTTP/2 PING every interval on a quiet connection; a peer that does not answer within the timeout is
/// gone (a frozen or vanished client's connection is closed rather than held forever).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-request limit, body included: a stream whose request body never completes is ended. Above the
/// API layer's own 30 s cap on the work, so that a slow provider still answers `DeadlineExceeded` there.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    #[error(
        "socket {path}: exists and is not a socket; refusing to delete it (fix GRPCSocketPath)"
    )]
    NotASocket { path: PathBuf },
    #[error("socket {path}: another process is serving on it; stop it first")]
    InUse { path: PathBuf },
    #[error(
        "socket @{name}: the abstract name is already bound by another process (possible squatting: \
         whoever holds it would receive kube-apiserver's calls, plaintext data keys included); refusing to \
         start. Find the holder with `ss -xlp | grep -F '@{name}'`, or use a socket path \
         (docs/operations.md)"
    )]
    AbstractTaken { name: String },
    // Causes are named in the message, not returned by `source()` (the rule of crate::error).
    #[error("socket {path}: {what}: {cause}")]
    Io {
        path: String,
        what: &'static str,
        cause: io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(String),
    #[error("socket {path}: its directory is not safe for it: {reason}")]
    UntrustedDir { path: PathBuf, reason: String },
}

impl From<tonic::transport::Error> for ServerError {
    fn from(e: tonic::transport::Error) -> Self {
        // tonic's own message is `transport error`; the chain says what failed.
        ServerError::Transport(crate::error::chain(&e))
    }
}

/// A bound socket, ready to serve. Removes its file when dropped.
pub(crate) struct BoundSocket {
    listener: UnixListener,
    guard: SocketFileGuard,
}

/// Removes the socket file when the plugin stops serving, however it stops.
struct SocketFileGuard(SocketSpec);

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        if let SocketSpec::Path(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> ServerError + use<> {
    let path = path.display().to_string();
    move |cause| ServerError::Io { path, what, cause }
}

/// Removes a leftover socket file of a previous run, if (and only if) nobody listens on it.
fn clear_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "cannot inspect")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale socket of a previous run");
            std::fs::remove_file(path).map_err(io_err(path, "cannot remove stale socket"))
        }
        Err(e) => Err(io_err(path, "cannot probe existing socket")(e)),
    }
}

/// Binds the configured socket. Must be called inside a tokio runtime.
pub(crate) fn bind(spec: &SocketSpec) -> Result<BoundSocket, ServerError> {
    let listener = match spec {
        SocketSpec::Path(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(io_err(dir, "cannot create directory"))?;
                // Whoever may write in the directory may replace the socket with their own and receive
                // kube-apiserver's plaintext data keys: the same rule as for a key file's directory.
                crate::keyfile::check_trusted_dir(dir).map_err(|e| ServerError::UntrustedDir {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            clear_stale(path)?;
            bind_private(path)?
        }
        SocketSpec::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let shown = format!("@{name}");
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(io_err(Path::new(&shown), "invalid abstract name"))?;
            let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| {
                if e.kind() == io::ErrorKind::AddrInUse {
                    ServerError::AbstractTaken { name: name.clone() }
                } else {
                    io_err(Path::new(&shown), "cannot bind")(e)
                }
            })?;
            std_listener
                .set_nonblocking(true)
                .map_err(io_err(Path::new(&shown), "cannot set non-blocking"))?;
            UnixListener::from_std(std_listener)
                .map_err(io_err(Path::new(&shown), "cannot register"))?
        }
    };
    Ok(BoundSocket {
        listener,
        guard: SocketFileGuard(spec.clone()),
    })
}

/// Binds `path` with a umask that leaves the socket file 0600 from the moment it exists: a chmod after
/// the bind would leave a window in which anyone could connect. The umask is process-wide; nothing else
/// creates files while the plugin starts.
fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    use rustix::fs::Mode;
    let before = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(before);
    bound.map_err(io_err(path, "cannot bind"))
}

/// Serves v1beta1 and v2 on the socket until `shutdown` resolves, then drains in-flight calls (bounded by
/// [`DRAIN_TIMEOUT`]) and removes the socket file. Only peers that `peers` allows are served.
pub(crate) async fn serve(
    backend: Backend,
    socket: BoundSocket,
    peers: PeerPolicy,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (v1, v2) = crate::api::services(backend);
    let v1 = v1
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let v2 = v2
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let BoundSocket { listener, guard } = socket;
    let spec = guard.0.clone();
    let incoming = accept::Acceptor::new(listener, peers, spec.to_string());
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(REQUEST_TIMEOUT)
        .add_service(v1)
        .add_service(v2)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(ServerError::from),
        () = shutdown => {}
    }
    tracing::info!(socket = %spec, "shutting down: no new calls, finishing in-flight ones");
    let _ = stop_tx.send(());
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(r) => r.map_err(ServerError::from),
        Err(_) => {
            tracing::warn!(
                "in-flight calls did not finish within {DRAIN_TIMEOUT:?}; exiting anyway"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn stale_socket_is_reclaimed_live_one_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kms.sock");
        let spec = SocketSpec::Path(path.clone());
        let first = bind(&spec).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused, file kept.
        assert!(matches!(bind(&spec), Err(ServerError::InUse { .. })));
        assert!(path.exists());
        drop(first);
        assert!(!path.exists(), "socket removed on drop");
        // Stale (listener gone, file left behind as after kill -9): reclaimed.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let again = bind(&spec).unwrap();
        drop(again);
        assert!(!path.exists(), "socket removed on drop");
        // A regular file or a directory at the path is never deleted.
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(bind(&spec), Err(ServerError::NotASocket { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(bind(&spec), Err(ServerError::NotASocket { .. })));
        assert!(path.is_dir());
    }

    #[tokio::test]
    async fn abstract_socket_binds_without_a_file() {
        let name = format!("gm-kms-test-{}", std::process::id());
        let b = bind(&SocketSpec::Abstract(name.clone())).unwrap();
        assert!(!Path::new(&format!("@{name}")).exists());
        let taken = bind(&SocketSpec::Abstract(name.clone())).err();
        assert!(
            matches!(&taken, Some(ServerError::AbstractTaken { name: n }) if *n == name),
            "second bind of a live name fails: {taken:?}"
        );
        let message = taken.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("possible squatting"), "{message}");
        drop(b);
    }
}
