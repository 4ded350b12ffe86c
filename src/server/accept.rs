//! The KMS socket's accept loop: who may connect, how many at once, and how long a connection may take
//! to start speaking HTTP/2 (DESIGN §7). All of it happens before tonic reads a byte.
//!
//! - Peer check: the `SO_PEERCRED` uid of every accepted connection, on a socket path and an abstract
//!   socket alike, must be allowed ([`PeerPolicy`], `AllowedPeerUids`); any other connection is closed
//!   before anything is read from it, logged with the peer's uid and pid, and counted.
//! - Connection cap: at most [`MAX_CONNECTIONS`] are served at once; one more is closed at once.
//! - Handshake timeout: a connection that has not sent the HTTP/2 client preface and its first frame
//!   within [`HANDSHAKE_TIMEOUT`] is cut off (a slow-loris holding a slot without ever speaking).
//! - Accept errors (EMFILE at the fd limit, ENFILE, ENOBUFS, ...) pause accepting with a bounded
//!   exponential backoff instead of retrying at once: the listening socket stays readable while the error
//!   lasts, so an immediate retry spins a core and starves the calls already being served.
//! - Every warning here is rate-limited ([`LogLimit`]): a flood of refused connections cannot fill the
//!   disk with log lines; what is held back is counted and said with the next line.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use gm_kms_authority::Normalized;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// Connections served at once; one more is closed as soon as it is accepted. kube-apiserver keeps one
/// connection per KMS provider entry; the benchmark uses 64.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Time a new connection has to send the HTTP/2 client preface (24 bytes) and its first frame (SETTINGS).
/// grpc-go sends both the moment it connects.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after a failed accept; doubled on each failure in a row up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while accept keeps failing.
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The HTTP/2 client preface and a frame header: what [`Handshake`] waits for.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEAD_LEN: usize = PREFACE_LEN + FRAME_HEADER_LEN;

/// Why a connection was closed without being served: the `reason` label of
/// `gm_kms_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer's uid is not in `AllowedPeerUids`.
    PeerUid,
    /// The peer's credentials could not be read (`SO_PEERCRED` failed).
    PeerUnknown,
    /// [`MAX_CONNECTIONS`] connections were being served.
    ConnectionLimit,
    /// No HTTP/2 preface and first frame within [`HANDSHAKE_TIMEOUT`].
    HandshakeTimeout,
}

impl Refusal {
    /// The metric label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::PeerUid => "peer_uid",
            Refusal::PeerUnknown => "peer_unknown",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// Which peers the socket serves, and where refusals are reported. The running plugin supplies both, so
/// this layer needs neither the config in force (a reload may change `AllowedPeerUids`) nor the metrics.
pub(crate) struct PeerPolicy {
    /// True when a peer of this uid may be served; asked once per accepted connection.
    pub(crate) allows: Box<dyn Fn(u32) -> bool + Send + Sync>,
    /// Called once for each connection closed without being served.
    pub(crate) refused: Box<dyn Fn(Refusal) + Send + Sync>,
}

impl std::fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPolicy").finish_non_exhaustive()
    }
}

/// At most [`LogLimit::BURST`] lines per [`LogLimit::WINDOW`] for one kind of warning; the lines held
/// back are counted and reported with the next line let through.
#[derive(Debug)]
struct LogLimit {
    window_start: Option<Instant>,
    used: u32,
    held_back: u64,
}

impl LogLimit {
    const BURST: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(10);

    const fn new() -> Self {
        Self {
            window_start: None,
            used: 0,
            held_back: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Self::WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= Self::BURST {
            self.held_back = self.held_back.saturating_add(1);
            return None;
        }
        self.used = self.used.saturating_add(1);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// One rate limit per kind of warning, so that a flood of one kind does not hide the others.
#[derive(Debug)]
struct LogLimits {
    peer: LogLimit,
    cap: LogLimit,
    handshake: LogLimit,
    accept: LogLimit,
}

/// What the accept loop and every admitted connection share.
#[derive(Debug)]
struct Shared {
    policy: PeerPolicy,
    slots: Arc<Semaphore>,
    /// The socket as configured, for log lines.
    socket: String,
    logs: Mutex<LogLimits>,
}

impl Shared {
    /// Runs `write` when the limit `pick` selects lets a line through, with the count held back.
    fn warn(&self, pick: impl FnOnce(&mut LogLimits) -> &mut LogLimit, write: impl FnOnce(u64)) {
        let admitted = {
            let mut limits = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            pick(&mut limits).admit(Instant::now())
        };
        if let Some(held_back) = admitted {
            write(held_back);
        }
    }

    fn refuse(&self, why: Refusal) {
        (self.policy.refused)(why);
    }

    /// The peer check and the connection cap. `None`: the connection was refused and is closed when
    /// `io` drops here, before anything was read from it.
    fn admit(self: &Arc<Self>, io: UnixStream) -> Option<Admitted> {
        let cred = match io.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                self.refuse(Refusal::PeerUnknown);
                self.warn(
                    |l| &mut l.peer,
                    |held_back| {
                        tracing::warn!(
                            socket = %self.socket,
                            error = %e,
                            held_back,
                            "refused a connection on the KMS socket: cannot read the peer's \
                             credentials (SO_PEERCRED); closed unread"
                        );
                    },
                );
                return None;
            }
        };
        let uid = cred.uid();
        if !(self.policy.allows)(uid) {
            self.refuse(Refusal::PeerUid);
            self.warn(
                |l| &mut l.peer,
                |held_back| {
                    tracing::warn!(
                        socket = %self.socket,
                        uid,
                        gid = cred.gid(),
                        pid = %cred.pid().map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                        held_back,
                        "refused a connection on the KMS socket: peer uid not in AllowedPeerUids; \
                         closed before reading a byte"
                    );
                },
            );
            return None;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.refuse(Refusal::ConnectionLimit);
            self.warn(
                |l| &mut l.cap,
                |held_back| {
                    tracing::warn!(
                        socket = %self.socket,
                        uid,
                        pid = %cred.pid().map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                        limit = MAX_CONNECTIONS,
                        held_back,
                        "refused a connection on the KMS socket: connection cap reached; closed unread"
                    );
                },
            );
            return None;
        };
        Some(Admitted {
            io,
            _slot: slot,
            handshake: Some(Handshake::new()),
            shared: Arc::clone(self),
        })
    }

    fn accept_failed(&self, e: &io::Error, pause: Duration) {
        self.warn(
            |l| &mut l.accept,
            |held_back| {
                tracing::warn!(
                    socket = %self.socket,
                    error = %e,
                    pause_ms = pause.as_millis() as u64,
                    held_back,
                    "accept on the KMS socket failed; pausing before the next attempt"
                );
            },
        );
    }
}

/// The connections of a listening socket that pass the peer check and the cap, each wrapped in the
/// `:authority` adapter; a stream that never ends and never yields an error (failed accepts are retried
/// after a pause), for tonic's `serve_with_incoming`.
pub(crate) struct Acceptor {
    listener: UnixListener,
    shared: Arc<Shared>,
    backoff: Duration,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Acceptor {
    pub(crate) fn new(listener: UnixListener, policy: PeerPolicy, socket: String) -> Self {
        Self {
            listener,
            shared: Arc::new(Shared {
                policy,
                slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                socket,
                logs: Mutex::new(LogLimits {
                    peer: LogLimit::new(),
                    cap: LogLimit::new(),
                    handshake: LogLimit::new(),
                    accept: LogLimit::new(),
                }),
            }),
            backoff: BACKOFF_MIN,
            pause: None,
        }
    }
}

impl tokio_stream::Stream for Acceptor {
    type Item = Result<Normalized<Admitted>, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = this.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((io, _)) => {
                    this.backoff = BACKOFF_MIN;
                    if let Some(conn) = this.shared.admit(io) {
                        return Poll::Ready(Some(Ok(gm_kms_authority::normalize(conn))));
                    }
                }
                Err(e) => {
                    let pause = this.backoff;
                    this.shared.accept_failed(&e, pause);
                    this.pause = Some(Box::pin(tokio::time::sleep(pause)));
                    this.backoff = pause.saturating_mul(2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Progress of a new connection towards a complete HTTP/2 preface and first frame.
struct Handshake {
    deadline: Pin<Box<Sleep>>,
    /// The first [`HEAD_LEN`] bytes, as far as read.
    head: [u8; HEAD_LEN],
    /// Bytes read so far.
    seen: usize,
}

impl Handshake {
    fn new() -> Self {
        Self {
            deadline: Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)),
            head: [0; HEAD_LEN],
            seen: 0,
        }
    }

    /// Accounts for `bytes`, the next bytes the client sent. True once the preface and the whole first
    /// frame (header and payload) have arrived. Whether they are well-formed is h2's to judge.
    fn saw(&mut self, bytes: &[u8]) -> bool {
        if let Some(room) = self.head.get_mut(self.seen..) {
            let n = room.len().min(bytes.len());
            if let (Some(dst), Some(src)) = (room.get_mut(..n), bytes.get(..n)) {
                dst.copy_from_slice(src);
            }
        }
        self.seen = self.seen.saturating_add(bytes.len());
        if self.seen < HEAD_LEN {
            return false;
        }
        let len = match self.head.get(PREFACE_LEN..PREFACE_LEN + 3) {
            Some(&[a, b, c]) => u32::from_be_bytes([0, a, b, c]) as usize,
            _ => 0,
        };
        self.seen >= HEAD_LEN.saturating_add(len)
    }
}

/// A connection that passed the peer check: holds one of the [`MAX_CONNECTIONS`] slots while it lives,
/// and fails its reads if the client has not sent the HTTP/2 preface and first frame within
/// [`HANDSHAKE_TIMEOUT`] (hyper then drops it, which closes it).
pub(crate) struct Admitted {
    io: UnixStream,
    _slot: OwnedSemaphorePermit,
    handshake: Option<Handshake>,
    shared: Arc<Shared>,
}

impl Admitted {
    fn handshake_timed_out(&mut self) -> io::Error {
        self.handshake = None;
        self.shared.refuse(Refusal::HandshakeTimeout);
        let shared = &self.shared;
        shared.warn(
            |l| &mut l.handshake,
            |held_back| {
                tracing::warn!(
                    socket = %shared.socket,
                    timeout_s = HANDSHAKE_TIMEOUT.as_secs(),
                    held_back,
                    "dropped a connection on the KMS socket: no HTTP/2 preface within the handshake timeout"
                );
            },
        );
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no HTTP/2 preface within the handshake timeout",
        )
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(h) = this.handshake.as_mut()
            && h.deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(this.handshake_timed_out()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some(h) = this.handshake.as_mut()
            && h.saw(buf.filled().get(before..).unwrap_or_default())
        {
            this.handshake = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Admitted {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_lets_a_burst_through_then_counts() {
        let mut l = LogLimit::new();
        let t = Instant::now();
        for _ in 0..LogLimit::BURST {
            assert_eq!(l.admit(t), Some(0));
        }
        assert_eq!(l.admit(t), None);
        assert_eq!(l.admit(t + Duration::from_secs(1)), None);
        // Next window: the count of lines held back comes with the first line.
        assert_eq!(l.admit(t + LogLimit::WINDOW), Some(2));
        assert_eq!(l.admit(t + LogLimit::WINDOW), Some(0));
    }

    #[tokio::test]
    async fn handshake_completes_with_the_preface_and_the_whole_first_frame() {
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS with one setting (6 bytes of payload).
        hello.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0]);
        hello.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        for split in 0..hello.len() {
            let mut h = Handshake::new();
            let (a, rest) = hello.split_at(split);
            let (b, last) = rest.split_at(rest.len() - 1);
            assert!(!h.saw(a), "complete after {split} bytes");
            assert!(!h.saw(b), "complete one byte short (split at {split})");
            assert!(h.saw(last), "split at {split}");
        }
    }

    #[test]
    fn refusal_labels_are_the_metric_reasons() {
        let labels = [
            Refusal::PeerUid,
            Refusal::PeerUnknown,
            Refusal::ConnectionLimit,
            Refusal::HandshakeTimeout,
        ]
        .map(Refusal::label);
        assert_eq!(labels, crate::metrics::CONNECTION_REFUSAL_REASONS);
    }

    #[tokio::test]
    async fn foreign_uid_is_refused_unread_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let refused = Arc::new(Mutex::new(Vec::new()));
        let seen = refused.clone();
        let own = crate::keyfile::own_uid();
        let mut acceptor = Acceptor::new(
            listener,
            PeerPolicy {
                allows: Box::new(move |uid| uid != own),
                refused: Box::new(move |r| seen.lock().unwrap().push(r)),
            },
            "test".into(),
        );
        let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
        // The refused connection is not yielded: the stream stays pending.
        let next = tokio::time::timeout(
            Duration::from_millis(200),
            tokio_stream::StreamExt::next(&mut acceptor),
        )
        .await;
        assert!(next.is_err(), "a refused connection is not served");
        assert_eq!(*refused.lock().unwrap(), [Refusal::PeerUid]);
        let mut buf = [0u8; 8];
        let n = tokio::io::AsyncReadExt::read(&mut client, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a byte sent");
    }
}
