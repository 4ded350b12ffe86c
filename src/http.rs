//! The HTTP side listener on `HealthAddr` (DESIGN §1, §5, §7): `GET /livez`, `GET /healthz`,
//! `GET /metrics`.
//!
//! - `/livez`: 200 `ok` while the process serves. It depends on nothing remote: restarting the plugin
//!   cannot fix a KMS outage, so liveness must not fail on one.
//! - `/healthz`: 200 `ok` when the last background seal/open round trip through the primary key worked
//!   ([`crate::health`], refreshed by the prober, never a remote call made here), else 503 and the reason
//!   on one line. The same answer as KMS v2 `Status.healthz`.
//! - `/metrics`: [`crate::metrics::render`], OpenMetrics text when the client asks for it, else the
//!   Prometheus text format 0.0.4.
//! - Anything else: 404; a method other than GET or HEAD on these paths: 405.
//!
//! It is a side door: if the address cannot be bound the error is logged loudly and binding is retried in
//! the background, while the KMS socket serves as usual. A busy port must never keep Secrets unreadable.
//!
//! Idle connections cannot hold it down (DESIGN §7; issue 13): each connection serves one request, must
//! send its request head within [`HEADER_READ_TIMEOUT`] and is closed after [`CONNECTION_DEADLINE`]
//! whatever it does; when [`MAX_CONNECTIONS`] are open, a new connection evicts the oldest one that has not
//! sent a complete request head yet (else the oldest of all) instead of being refused, so the kubelet's
//! liveness probe, which sends its request at once, is served under a flood of idle or slow connections.
//! A `HealthAddr` that is not a loopback address is logged as a warning at start.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::metrics::Format;

/// What the listener answers from: the running plugin implements it, tests use a stand-in. The listener
/// never reaches into the plugin; it asks for a verdict and a rendered text.
pub(crate) trait Probes: Send + Sync + 'static {
    /// `Ok` when the plugin can seal and open with its primary key, else the reason (`/healthz`).
    fn health(&self) -> Result<(), String>;
    /// The `/metrics` text in `format`.
    fn metrics(&self, format: Format) -> String;
}

/// Pause between attempts to bind a busy or unavailable address.
pub(crate) const BIND_RETRY: Duration = Duration::from_secs(3);
/// While binding keeps failing, the error is logged again this often (every attempt is retried).
const BIND_LOG_EVERY: u32 = 20;
/// Connections open at once; a new one beyond this evicts an old one (the listener is for local probes
/// and scrapes, a few at a time).
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request head by then is disconnected. Probes and scrapers send theirs
/// at once.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection is closed after this long whatever it does (e.g. a client that never reads its answer).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// After an eviction the next accept waits this long: under a flood, about 1,000 accepts a second.
const EVICTION_PAUSE: Duration = Duration::from_millis(1);
/// While evictions go on, they are logged at most this often.
const EVICTION_LOG_EVERY: Duration = Duration::from_secs(60);

/// Binds `addr` (retrying in the background until it can) and serves until the handle is aborted.
/// Aborting also closes every open connection.
pub(crate) fn spawn(probes: Arc<dyn Probes>, addr: SocketAddr) -> JoinHandle<()> {
    warn_if_exposed(addr);
    tokio::spawn(async move { serve(probes, bind(addr).await).await })
}

/// The listener answers anyone who reaches it: say so at start unless only this host can.
fn warn_if_exposed(addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "HealthAddr is not a loopback address: every host that can reach {addr} can read /metrics \
             and open connections to the health listener; keep it on 127.0.0.1 (the static pod probes \
             127.0.0.1) unless a firewall limits who reaches it (docs/threat-model.md)"
        );
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        match TcpListener::bind(addr).await {
            Ok(l) => {
                if attempt > 1 {
                    tracing::info!(%addr, attempt, "health listener: bound after retrying");
                }
                return l;
            }
            Err(e) => {
                if attempt == 1 || attempt.is_multiple_of(BIND_LOG_EVERY) {
                    tracing::error!(
                        %addr,
                        error = %e,
                        attempt,
                        retry_s = BIND_RETRY.as_secs(),
                        "health listener: cannot bind HealthAddr; /livez /healthz /metrics are down \
                         (the KMS socket keeps serving); retrying"
                    );
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    }
}

/// Serves on a bound listener until the task is aborted.
pub(crate) async fn serve(probes: Arc<dyn Probes>, listener: TcpListener) {
    let Ok(local) = listener.local_addr() else {
        tracing::error!("health listener: socket has no local address");
        return;
    };
    // The bound address, port included: with `HealthAddr` port 0 this line is how one learns the port
    // (tests/it/ops.rs reads it; keep the `health listener serving http://ADDR/` prefix).
    tracing::info!(
        addr = %local,
        "health listener serving http://{local}/livez /healthz /metrics"
    );
    let mut conns = JoinSet::new();
    let mut table = Table::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "health listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let evicted = table.make_room();
        let probes = probes.clone();
        let requested = Arc::new(AtomicBool::new(false));
        let seen = requested.clone();
        let abort = conns.spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                // The request head is complete: this connection is answered now, no longer idle.
                seen.store(true, Ordering::Relaxed);
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let resp = respond(probes.as_ref(), req.method(), req.uri().path(), accept);
                async move { Ok::<_, Infallible>(resp) }
            });
            // One request per connection: probes and scrapes are seconds apart, and no client can hold
            // one of the few connection slots idle.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
        });
        table.push(Conn { requested, abort });
        if evicted {
            // A full table means a flood, and a client that reopens whatever we close could make this
            // loop spin on a core the KMS socket shares. Pausing also lets the new connection read its
            // request head before the next accept can evict it.
            tokio::time::sleep(EVICTION_PAUSE).await;
        }
    }
}

/// One open connection of the listener.
struct Conn {
    /// Set once its request head has arrived.
    requested: Arc<AtomicBool>,
    abort: AbortHandle,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Table {
    conns: VecDeque<Conn>,
    evicted: u64,
    last_log: Option<Instant>,
}

impl Table {
    fn push(&mut self, c: Conn) {
        self.conns.push_back(c);
    }

    /// Forgets finished connections; if the table is still full, closes the oldest connection that has
    /// not sent its request head (else the oldest of all) to make room for one more. True if it closed one.
    fn make_room(&mut self) -> bool {
        self.conns.retain(|c| !c.abort.is_finished());
        let mut closed = false;
        while self.conns.len() >= MAX_CONNECTIONS {
            let at = self
                .conns
                .iter()
                .position(|c| !c.requested.load(Ordering::Relaxed))
                .unwrap_or(0);
            let Some(victim) = self.conns.remove(at) else {
                break;
            };
            victim.abort.abort();
            self.evicted = self.evicted.saturating_add(1);
            closed = true;
        }
        if self.evicted > 0
            && self
                .last_log
                .is_none_or(|t| t.elapsed() >= EVICTION_LOG_EVERY)
        {
            tracing::warn!(
                evicted = self.evicted,
                max_connections = MAX_CONNECTIONS,
                "health listener: connection table full; closed the oldest idle connections to serve \
                 new ones (a client is holding connections open)"
            );
            self.evicted = 0;
            self.last_log = Some(Instant::now());
        }
        closed
    }
}

/// The answer to one request (hyper leaves the body out for HEAD).
pub(crate) fn respond(
    probes: &dyn Probes,
    method: &Method,
    path: &str,
    accept: Option<&str>,
) -> Response<Full<Bytes>> {
    if !matches!(path, "/livez" | "/healthz" | "/metrics") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /livez, /healthz or /metrics",
        );
    }
    if *method != Method::GET && *method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/livez" => text(StatusCode::OK, "ok"),
        "/healthz" => match probes.health() {
            Ok(()) => text(StatusCode::OK, "ok"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &one_line(&reason)),
        },
        _ => {
            let format = Format::negotiate(accept);
            body(
                StatusCode::OK,
                format.content_type(),
                probes.metrics(format),
            )
        }
    }
}

/// Collapses a multi-line reason into one line.
fn one_line(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "unhealthy".into()
    } else {
        line
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", msg.to_string())
}

fn body(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A stand-in for the plugin: a settable health verdict and a fixed metrics text per format.
    #[derive(Default)]
    struct Fixed {
        unhealthy: std::sync::Mutex<Option<String>>,
    }

    impl Probes for Fixed {
        fn health(&self) -> Result<(), String> {
            match self.unhealthy.lock().unwrap().clone() {
                None => Ok(()),
                Some(reason) => Err(reason),
            }
        }
        fn metrics(&self, format: Format) -> String {
            format!("metrics as {format:?}\n")
        }
    }

    async fn get(
        p: &dyn Probes,
        method: Method,
        path: &str,
        accept: Option<&str>,
    ) -> (StatusCode, String, String) {
        let r = respond(p, &method, path, accept);
        let status = r.status();
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn endpoints() {
        let p = Fixed::default();
        assert_eq!(get(&p, Method::GET, "/livez", None).await.0, StatusCode::OK);
        *p.unhealthy.lock().unwrap() = Some("starting:\nfirst round trip".into());
        let (s, _, body) = get(&p, Method::GET, "/healthz", None).await;
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: first round trip"
            )
        );
        // Liveness never depends on the key round trip.
        assert_eq!(get(&p, Method::GET, "/livez", None).await.0, StatusCode::OK);
        *p.unhealthy.lock().unwrap() = None;
        let (s, _, body) = get(&p, Method::GET, "/healthz", None).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ok"));

        let (s, ct, body) = get(&p, Method::GET, "/metrics", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct, crate::metrics::PROMETHEUS_CONTENT_TYPE);
        assert_eq!(body, "metrics as Prometheus\n");
        let (_, ct, body) = get(
            &p,
            Method::GET,
            "/metrics",
            Some("application/openmetrics-text; version=1.0.0"),
        )
        .await;
        assert_eq!(ct, crate::metrics::OPENMETRICS_CONTENT_TYPE);
        assert_eq!(body, "metrics as OpenMetrics\n");

        assert_eq!(
            get(&p, Method::GET, "/nope", None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&p, Method::POST, "/healthz", None).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            get(&p, Method::HEAD, "/livez", None).await.0,
            StatusCode::OK
        );
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(one_line("a\nb\r\n  c"), "a b c");
        assert_eq!(one_line(" \n"), "unhealthy");
    }

    #[tokio::test]
    async fn serves_over_tcp_and_stops_when_aborted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Bound here and handed over: no window in which another process could take the port.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = tokio::spawn(serve(Arc::new(Fixed::default()), listener));
        let mut resp = String::new();
        for _ in 0..500 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                s.read_to_string(&mut resp).await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
        h.abort();
        let _ = h.await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    /// `GET /livez` on a fresh connection; the status line, or the error.
    async fn livez(addr: SocketAddr) -> Result<String, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                .await?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await?;
            std::io::Result::Ok(String::from_utf8_lossy(&resp).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(r)) if r.starts_with("HTTP/1.1 200") => Ok(r),
            Ok(Ok(r)) => Err(format!("answer {r:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in 3 s".into()),
        }
    }

    #[tokio::test]
    async fn idle_connections_are_evicted_and_timed_out() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = tokio::spawn(serve(Arc::new(Fixed::default()), listener));
        // Twice as many silent connections as the table holds: the oldest are evicted, and a probe that
        // comes after them is still answered.
        let mut idle = Vec::new();
        for _ in 0..2 * MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        for _ in 0..5 {
            livez(addr).await.unwrap();
        }
        // An evicted one sees its connection closed at once.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), idle[0].read(&mut buf))
            .await
            .expect("the oldest idle connection was closed");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // The others are closed by the header timeout (1 s), not held for 10.
        let last = idle.last_mut().unwrap();
        let t = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(3), last.read(&mut buf))
            .await
            .expect("an idle connection is closed after the header timeout");
        assert!(t.elapsed() < Duration::from_secs(3));
        h.abort();
    }

    #[test]
    fn a_non_loopback_health_addr_is_a_warning() {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logged = |addr: &str| {
            let buf = Buf::default();
            let w = buf.clone();
            let sub = tracing_subscriber::fmt()
                .with_writer(move || w.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(sub, || warn_if_exposed(addr.parse().unwrap()));
            String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
        };
        for exposed in ["0.0.0.0:8787", "10.0.0.5:8787", "[::]:8787"] {
            let text = logged(exposed);
            assert!(
                text.contains("WARN") && text.contains("not a loopback address"),
                "{text}"
            );
        }
        for local in ["127.0.0.1:8787", "[::1]:8787"] {
            assert_eq!(logged(local), "");
        }
    }
}
