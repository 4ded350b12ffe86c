//! How the JD Cloud client reaches its endpoint (issue 15): the route (directly, or through an HTTP
//! forward proxy), whom TLS trusts, and the connector that hyper's client uses.
//!
//! - Route: `KmsProxy` when set (always used); else `HTTPS_PROXY`/`https_proxy` for an `https` endpoint
//!   and `HTTP_PROXY`/`http_proxy` for an `http` one, unless `NO_PROXY`/`no_proxy` names the endpoint's
//!   host. Matching is hyper-util's [`Matcher`], curl's rules: a domain matches itself and its
//!   subdomains (with or without a leading dot), IP addresses and CIDR blocks match exactly, `*` matches
//!   everything, ports are not compared. The decision is made once per client: it has one endpoint.
//! - Through a proxy, `https` goes in a `CONNECT` tunnel (hyper-util's [`Tunnel`]) and TLS runs end to
//!   end inside it; `http` requests go to the proxy in absolute form. Proxy credentials
//!   (`KmsProxyCredentialsFile`, or `user:pass@` in a proxy variable) are sent as `Proxy-Authorization:
//!   Basic`, marked sensitive, and never appear in a message: the proxy is named by `host:port` only.
//! - TLS: rustls with ring, TLS 1.2 and 1.3 only, the server always verified (there is no switch to skip
//!   it). Roots: the system's (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), or Mozilla's built-in list where
//!   the system has none, plus `KmsCaFile`; with `KmsCaFileOnly`, `KmsCaFile` alone. The end-entity
//!   certificate of the last handshake is kept for `check` ([`TlsPeer`]).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::{KmsNetwork, ProxySpec};

/// Where the proxy of a route came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxySource {
    /// The `KmsProxy` field.
    Config,
    /// This environment variable.
    Env(&'static str),
}

impl std::fmt::Display for ProxySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxySource::Config => f.write_str("KmsProxy"),
            ProxySource::Env(name) => f.write_str(name),
        }
    }
}

/// An HTTP forward proxy on the way to the endpoint.
#[derive(Clone)]
pub(crate) struct ProxyRoute {
    /// `http://host:port/`, without credentials.
    uri: Uri,
    /// `host:port`: how messages name the proxy.
    host_port: String,
    /// `Basic …`, marked sensitive.
    auth: Option<HeaderValue>,
    source: ProxySource,
}

impl std::fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRoute")
            .field("proxy", &self.host_port)
            .field("source", &self.source)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ProxyRoute {
    /// `host:port` of the proxy.
    pub(crate) fn host_port(&self) -> &str {
        &self.host_port
    }

    /// The `Proxy-Authorization` value, if any (sensitive).
    pub(crate) fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }
}

/// How connections to the endpoint are made.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// Straight to the endpoint. `bypassed_by` names the variable (`NO_PROXY`) that exempted it from a
    /// proxy set in the environment.
    Direct { bypassed_by: Option<&'static str> },
    /// Through a forward proxy.
    Proxy(ProxyRoute),
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct { bypassed_by: None } => f.write_str("direct"),
            Route::Direct {
                bypassed_by: Some(var),
            } => write!(f, "direct ({var} exempts it from the proxy)"),
            Route::Proxy(p) => write!(f, "via proxy {} ({})", p.host_port, p.source),
        }
    }
}

/// The first of `names` set to a non-empty value, and that value.
fn first_env(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names.iter().find_map(|name| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (*name, v))
    })
}

/// Decides the route to `scheme://endpoint`: `configured` (`KmsProxy`) if set, else the proxy variables
/// of `env` (the process environment in production). Errors are config errors; they name the field or
/// variable and never hold a credential.
pub(crate) fn decide_route(
    scheme: &str,
    endpoint: &str,
    configured: Option<&ProxySpec>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Route, String> {
    if let Some(spec) = configured {
        let uri: Uri = format!("{}/", spec.url)
            .parse()
            .map_err(|_| "KmsProxy is not http://host:port".to_string())?;
        let host_port = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| "KmsProxy is not http://host:port".to_string())?;
        let auth = match &spec.credentials {
            Some(c) => Some(basic_auth(c.user.expose(), c.password.expose())?),
            None => None,
        };
        return Ok(Route::Proxy(ProxyRoute {
            uri,
            host_port,
            auth,
            source: ProxySource::Config,
        }));
    }
    // Go and curl ignore HTTP_PROXY under CGI (httpoxy): a request header could have set it.
    let cgi = env("REQUEST_METHOD").is_some();
    let names: &[&'static str] = match scheme {
        "https" => &["HTTPS_PROXY", "https_proxy"],
        "http" if !cgi => &["HTTP_PROXY", "http_proxy"],
        _ => &[],
    };
    let Some((var, value)) = first_env(env, names) else {
        return Ok(Route::Direct { bypassed_by: None });
    };
    let no_proxy = first_env(env, &["NO_PROXY", "no_proxy"]);
    // `*` exempts every host, IP addresses included (the matcher applies it to host names only).
    if let Some((name, no)) = &no_proxy
        && no.split(',').any(|entry| entry.trim() == "*")
    {
        return Ok(Route::Direct {
            bypassed_by: Some(name),
        });
    }
    // Checked here, because the matcher ignores a value it cannot parse (and the proxy with it).
    let parsed: Uri = value
        .parse()
        .map_err(|_| format!("{var} is set but is not a proxy URL (http://host:port)"))?;
    if let Some(s) = parsed.scheme_str()
        && s != "http"
    {
        return Err(format!(
            "{var}: only http:// forward proxies are supported (it names a {s}:// proxy)"
        ));
    }
    let mut builder = Matcher::builder();
    builder = match scheme {
        "https" => builder.https(value),
        _ => builder.http(value),
    };
    if let Some((_, no)) = &no_proxy {
        builder = builder.no(no.clone());
    }
    let matcher = builder.build();
    let dst: Uri = format!("{scheme}://{endpoint}/")
        .parse()
        .map_err(|_| format!("KmsEndpoint {endpoint:?} is not host[:port]"))?;
    match matcher.intercept(&dst) {
        None => Ok(Route::Direct {
            bypassed_by: no_proxy.map(|(name, _)| name),
        }),
        Some(intercept) => {
            let uri = intercept.uri().clone();
            if uri.scheme_str() != Some("http") {
                return Err(format!("{var}: only http:// forward proxies are supported"));
            }
            let host_port = match (uri.host(), uri.port_u16()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => format!("{h}:80"),
                (None, _) => return Err(format!("{var} names no proxy host")),
            };
            Ok(Route::Proxy(ProxyRoute {
                uri,
                host_port,
                auth: intercept.basic_auth().cloned(),
                source: ProxySource::Env(var),
            }))
        }
    }
}

/// `Basic base64(user:password)`, marked sensitive.
fn basic_auth(user: &str, password: &str) -> Result<HeaderValue, String> {
    use base64::Engine;
    let token = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
    );
    let mut value = HeaderValue::from_str(&format!("Basic {}", token.as_str()))
        .map_err(|_| "KmsProxyCredentialsFile: not valid in an HTTP header".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads a `KmsCaFile` PEM bundle: at least one certificate, every `CERTIFICATE` block valid.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let at = |e: &dyn std::fmt::Display| format!("KmsCaFile {}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(|e| at(&format_args!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(&format_args!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(at(
            &"holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The roots and TLS settings of an `https` client.
pub(crate) fn tls_config(network: &KmsNetwork) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if !network.ca_file_only {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::debug!("no system TLS roots; using the built-in Mozilla roots");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    if let Some(path) = &network.ca_file {
        for (i, cert) in read_ca_file(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                format!(
                    "KmsCaFile {}: certificate {} is not a usable root: {e}",
                    path.display(),
                    i + 1
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What `check` shows of the endpoint's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsPeer {
    /// RFC 4514 subject.
    pub subject: String,
    /// RFC 4514 issuer.
    pub issuer: String,
    /// `notAfter`, RFC 3339 UTC.
    pub not_after: String,
}

impl TlsPeer {
    fn from_der(der: &[u8]) -> Result<Self, String> {
        use x509_cert::der::Decode;
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
        let tbs = cert.tbs_certificate();
        Ok(Self {
            subject: tbs.subject().to_string(),
            issuer: tbs.issuer().to_string(),
            not_after: tbs.validity().not_after.to_date_time().to_string(),
        })
    }
}

impl std::fmt::Display for TlsPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "subject \"{}\", issuer \"{}\", not after {}",
            self.subject, self.issuer, self.not_after
        )
    }
}

/// Why a connection could not be made. `retry` is false for what another attempt cannot fix (the proxy
/// wants credentials, the endpoint's certificate is refused).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ConnectError {
    message: String,
    pub(crate) retry: bool,
}

impl ConnectError {
    fn new(message: String, retry: bool) -> Self {
        Self { message, retry }
    }
}

/// An error and its sources, `: `-joined, each text once.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// hyper's connector: TCP to the endpoint or to the proxy, the CONNECT tunnel, TLS.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: HttpConnector,
    route: Arc<Route>,
    tls: Option<tokio_rustls::TlsConnector>,
    peer: Arc<Mutex<Option<Result<TlsPeer, String>>>>,
}

impl Connector {
    /// `tls` is `Some` for an `https` endpoint.
    pub(crate) fn new(
        tcp: HttpConnector,
        route: Route,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            tcp,
            route: Arc::new(route),
            tls: tls.map(tokio_rustls::TlsConnector::from),
            peer: Arc::new(Mutex::new(None)),
        }
    }

    /// The route in use.
    pub(crate) fn route(&self) -> &Route {
        &self.route
    }

    /// The end-entity certificate of the last TLS handshake (or why it could not be read).
    pub(crate) fn last_peer(&self) -> Option<Result<TlsPeer, String>> {
        self.peer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn connect(mut self, dst: Uri) -> Result<KmsStream, ConnectError> {
        let target = dst
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let route = self.route.clone();
        let tcp = match &*route {
            Route::Direct { .. } => self.tcp.call(dst.clone()).await.map_err(|e| {
                ConnectError::new(
                    format!("cannot connect to {target}: {}", error_chain(&e)),
                    true,
                )
            })?,
            Route::Proxy(p) if self.tls.is_none() => {
                let io = self.tcp.call(p.uri.clone()).await.map_err(|e| {
                    ConnectError::new(
                        format!(
                            "cannot connect to proxy {} ({}): {}",
                            p.host_port,
                            p.source,
                            error_chain(&e)
                        ),
                        true,
                    )
                })?;
                // Plain http through the proxy: requests go to it in absolute form.
                return Ok(KmsStream::new(Io::Tcp(io.into_inner()), true));
            }
            Route::Proxy(p) => {
                let mut tunnel = Tunnel::new(p.uri.clone(), self.tcp.clone());
                if let Some(auth) = &p.auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                tunnel
                    .call(dst.clone())
                    .await
                    .map_err(|e| tunnel_error(p, &target, &e))?
            }
        };
        let tcp = tcp.into_inner();
        let Some(tls) = self.tls.clone() else {
            return Ok(KmsStream::new(Io::Tcp(tcp), false));
        };
        let host = dst.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            ConnectError::new(format!("{host:?} is not a TLS server name: {e}"), false)
        })?;
        let stream = tls.connect(name, tcp).await.map_err(|e| {
            // A certificate the verifier refused stays refused; anything else may be transient.
            let refused = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                            | rustls::Error::PeerIncompatible(_)
                    )
                });
            ConnectError::new(format!("TLS handshake with {target} failed: {e}"), !refused)
        })?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|der| TlsPeer::from_der(der));
        *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = peer;
        Ok(KmsStream::new(Io::Tls(Box::new(stream)), false))
    }
}

/// A failed CONNECT as a message naming the proxy. hyper-util's `TunnelError` is not exported, so the
/// kind is read from its text ("proxy authorization required" is its 407).
fn tunnel_error(
    p: &ProxyRoute,
    target: &str,
    e: &(dyn std::error::Error + 'static),
) -> ConnectError {
    let text = e.to_string();
    let chain = error_chain(e);
    let proxy = format!("proxy {} ({})", p.host_port, p.source);
    if text.contains("authorization required") {
        let hint = if p.auth.is_some() {
            "the proxy refused the credentials"
        } else {
            "no credentials were configured (KmsProxyCredentialsFile)"
        };
        ConnectError::new(
            format!(
                "{proxy} answered 407 Proxy Authentication Required to CONNECT {target}: {hint}"
            ),
            false,
        )
    } else if text.contains("failed to create underlying connection") {
        ConnectError::new(format!("cannot connect to {proxy}: {chain}"), true)
    } else if text.contains("unsuccessful") {
        // The status itself is not exposed by hyper-util: 5xx when the proxy cannot reach the endpoint,
        // 403 for a port it does not tunnel to, and some proxies (tinyproxy) answer 401 to wrong
        // credentials.
        let hint = if p.auth.is_some() {
            "; if it refused the credentials, check KmsProxyCredentialsFile"
        } else {
            ""
        };
        ConnectError::new(
            format!("{proxy} refused CONNECT {target} (its answer was not 200{hint})"),
            true,
        )
    } else {
        ConnectError::new(format!("{proxy}: CONNECT {target} failed: {chain}"), true)
    }
}

impl Service<Uri> for Connector {
    type Response = KmsStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<KmsStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        // HttpConnector is always ready; connections are made in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        Box::pin(self.clone().connect(dst))
    }
}

/// A TCP stream, or TLS over one.
enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the connector hands hyper: the stream, and whether it leads to a proxy that wants requests in
/// absolute form.
pub(crate) struct KmsStream {
    io: TokioIo<Io>,
    to_proxy: bool,
}

impl KmsStream {
    fn new(io: Io, to_proxy: bool) -> Self {
        Self {
            io: TokioIo::new(io),
            to_proxy,
        }
    }
}

impl Connection for KmsStream {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.to_proxy)
    }
}

impl hyper::rt::Read for KmsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for KmsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
