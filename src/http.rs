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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

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
/// Connections served at once; more are closed at once (the listener is for local probes and scrapes).
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` (retrying in the background until it can) and serves until the handle is aborted.
/// Aborting also closes every open connection.
pub(crate) fn spawn(probes: Arc<dyn Probes>, addr: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move { serve(probes, bind(addr).await).await })
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
        if conns.len() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let probes = probes.clone();
        conns.spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let resp = respond(probes.as_ref(), req.method(), req.uri().path(), accept);
                async move { Ok::<_, Infallible>(resp) }
            });
            // One request per connection: probes and scrapes are seconds apart, and no client can hold
            // one of the few connection slots idle.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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
}
