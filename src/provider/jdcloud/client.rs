//! The HTTP(S) side of the JD Cloud provider: builds, signs and sends one KMS call, with a per-attempt
//! timeout and bounded, jittered retries inside an overall deadline. It returns the HTTP status and body
//! of the answer it settled on; reading the JSON and choosing an error kind is the caller's business.
//! How connections are made (proxy, TLS trust) is [`super::net`]'s.

use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, PROXY_AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use zeroize::Zeroizing;

use super::net::{self, ConnectError, Connector, Route, TlsPeer, error_chain};
use super::sign::{self, Credentials, HEADER_CONTENT_SHA256, HEADER_DATE, HEADER_NONCE};
use crate::config::{KmsNetwork, SignVersion};
use crate::secret::SecretString;

/// The largest answer body read; KMS answers are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// How a call is retried. Only failures that may pass are retried: no answer (connection refused or
/// dropped, TLS failure, timeout), 5xx and 429. A 4xx or a 2xx is final at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// One attempt's limit (`KmsTimeoutMs`), connecting included.
    pub attempt_timeout: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each later one, capped at `max_backoff`. The actual
    /// pause is drawn uniformly from [half, whole) of that value.
    pub base_backoff: Duration,
    /// The cap on the doubled backoff.
    pub max_backoff: Duration,
    /// The whole call, attempts and pauses, never takes longer than this.
    pub deadline: Duration,
}

impl RetryPolicy {
    /// The policy for a `KmsTimeoutMs`: 3 attempts, backoff 50 ms doubling up to 400 ms, everything within
    /// 1.4 × the timeout (2.8 s for the default 2 s, under kube-apiserver's 3 s per-call deadline).
    pub fn for_timeout(attempt_timeout: Duration) -> Self {
        Self {
            attempt_timeout,
            max_attempts: 3,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            deadline: attempt_timeout.saturating_mul(7) / 5,
        }
    }

    /// The pauses between attempts, `max_attempts - 1` of them. backon's jitter adds a uniform draw from
    /// [0, d) to its delay d, so starting and capping at half of ours gives a pause uniform in [d/2, d)
    /// of d = `base_backoff` × 2^(n-1) capped at `max_backoff` (backon does not cap its first delay,
    /// hence the `min`). Measured against the hand-written draw it replaced (uniform in µs on [d/2, d]):
    /// 200,000 draws per pause 1–6 all fell in [d/2, d], means within 0.1 %; backon computes in f32 and
    /// draws from fastrand (seeded per process) instead of the OS RNG, which a jitter does not need.
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        let retries = self.max_attempts.max(1) - 1;
        ExponentialBuilder::new()
            .with_min_delay(self.base_backoff.min(self.max_backoff) / 2)
            .with_max_delay(self.max_backoff / 2)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(usize::try_from(retries).unwrap_or(usize::MAX))
    }
}

/// The KMS operations we call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Encrypt,
    Decrypt,
    DescribeKey,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::DescribeKey => "DescribeKey",
        }
    }

    fn method(self) -> Method {
        match self {
            Op::Encrypt | Op::Decrypt => Method::POST,
            Op::DescribeKey => Method::GET,
        }
    }

    /// The `:Action` suffix of the path, if any.
    fn action(self) -> Option<&'static str> {
        match self {
            Op::Encrypt => Some("Encrypt"),
            Op::Decrypt => Some("Decrypt"),
            Op::DescribeKey => None,
        }
    }
}

/// The answer a call settled on.
pub(crate) struct Answer {
    pub status: StatusCode,
    /// Zeroized on drop: a Decrypt answer holds key material.
    pub body: Zeroizing<Vec<u8>>,
    /// Attempts made (1 when the first one answered for good).
    pub attempts: u32,
}

/// A call that got no usable answer within its attempts and deadline.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The last attempt answered 5xx or 429.
    Status {
        answer_status: StatusCode,
        body: Zeroizing<Vec<u8>>,
        attempts: u32,
    },
    /// The last attempt got no answer: connect error, dropped connection, TLS error, or timeout.
    NoAnswer { detail: String, attempts: u32 },
    /// No answer, and another attempt cannot change that: the proxy wants other credentials (407), or
    /// the endpoint's certificate is refused. Not retried.
    Final { detail: String, attempts: u32 },
}

impl Failure {
    fn retryable(&self) -> bool {
        !matches!(self, Failure::Final { .. })
    }
}

/// The `Host` header (and signed host) of an endpoint `host[:port]`: a port of 80 or 443 is left out,
/// as the official SDKs sign it.
pub(crate) fn host_header(endpoint: &str) -> String {
    match endpoint.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && (port == "80" || port == "443")
                && !host.ends_with(':')
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            host.to_string()
        }
        _ => endpoint.to_string(),
    }
}

/// The request path as each SDK puts it on the wire: `/v1/key/{keyId}` plus `:{action}`. The key id is
/// percent-encoded (all but `A-Za-z0-9-._~`); the action's `:` is sent as is in v3 (Python SDK) and as
/// `%3A` in v2 (Go SDK), which also is what each version signs.
pub(crate) fn wire_path(version: SignVersion, key_id: &str, action: Option<&str>) -> String {
    let mut path = format!("/v1/key/{}", sign::quote(key_id, b""));
    if let Some(action) = action {
        path.push_str(match version {
            SignVersion::V3 => ":",
            SignVersion::V2 => "%3A",
        });
        path.push_str(action);
    }
    path
}

type HttpClient = Client<Connector, Full<Bytes>>;

/// Why one attempt got no answer.
struct NoAnswer {
    detail: String,
    retry: bool,
}

impl NoAnswer {
    fn retry(detail: String) -> Self {
        Self {
            detail,
            retry: true,
        }
    }
}

/// A signed-request client for one endpoint and one set of credentials.
pub(crate) struct KmsClient {
    http: HttpClient,
    connector: Connector,
    scheme: &'static str,
    endpoint: String,
    host: String,
    access_key: SecretString,
    secret_key: SecretString,
    version: SignVersion,
    policy: RetryPolicy,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsClient")
            .field(
                "endpoint",
                &format_args!("{}://{}", self.scheme, self.endpoint),
            )
            .field("route", self.connector.route())
            .field("sign_version", &self.version)
            .field("policy", &self.policy)
            .field("credentials", &format_args!("<redacted>"))
            .finish()
    }
}

impl KmsClient {
    /// `schema` is `http` or `https`; `endpoint` is `host[:port]`. The route (proxy) and TLS trust
    /// follow `network` and, where it leaves the proxy open, the variables that `env` returns
    /// ([`net::decide_route`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        schema: &str,
        endpoint: &str,
        access_key: SecretString,
        secret_key: SecretString,
        version: SignVersion,
        policy: RetryPolicy,
        network: &KmsNetwork,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let scheme = match schema {
            "http" => "http",
            "https" => "https",
            other => return Err(format!("KmsSchema {other:?} must be \"http\" or \"https\"")),
        };
        let authority: http::uri::Authority = endpoint
            .parse()
            .map_err(|_| format!("KmsEndpoint {endpoint:?} is not host[:port]"))?;
        if authority.as_str().contains('@') || endpoint.is_empty() {
            return Err(format!("KmsEndpoint {endpoint:?} is not host[:port]"));
        }
        let route = net::decide_route(scheme, authority.as_str(), network.proxy.as_ref(), env)?;
        let tls = match scheme {
            "https" => Some(net::tls_config(network)?),
            _ => None,
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(policy.attempt_timeout));
        let connector = Connector::new(tcp, route, tls);
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(connector.clone());
        let user_agent = HeaderValue::from_str(&format!(
            "{}/{} kms/v1",
            crate::RUNTIME_NAME,
            crate::RUNTIME_VERSION
        ))
        .map_err(|e| format!("user agent: {e}"))?;
        Ok(Self {
            http,
            connector,
            scheme,
            endpoint: authority.as_str().to_string(),
            host: host_header(authority.as_str()),
            access_key,
            secret_key,
            version,
            policy,
            user_agent,
        })
    }

    pub(crate) fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// `scheme://endpoint`, for messages.
    pub(crate) fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.endpoint)
    }

    /// `scheme://endpoint`, and the proxy when there is one, for messages (never a credential).
    pub(crate) fn target(&self) -> String {
        match self.connector.route() {
            Route::Proxy(_) => format!("{} {}", self.base_url(), self.connector.route()),
            Route::Direct { .. } => self.base_url(),
        }
    }

    /// How connections are made.
    pub(crate) fn route(&self) -> &Route {
        self.connector.route()
    }

    /// The endpoint's certificate as the last TLS handshake saw it (`https` only).
    pub(crate) fn last_tls_peer(&self) -> Option<Result<TlsPeer, String>> {
        self.connector.last_peer()
    }

    /// Calls `op` on `key_id` with `body`, retrying as [`RetryPolicy`] says. Returns the first answer that
    /// is final (2xx, 4xx other than 429, or anything else that is not retried).
    pub(crate) async fn call(
        &self,
        op: Op,
        key_id: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<Answer, Failure> {
        let deadline = Instant::now() + self.policy.deadline;
        // One buffer for every attempt, zeroized when the last reference goes.
        let body = Bytes::from_owner(body);
        let mut attempts = 0;
        // The failure the last pause followed: what the call reports if that pause (timer slack) ran into
        // the deadline, since no attempt starts after it.
        let mut paused_after: Option<Failure> = None;
        let outcome = (|| {
            let now = Instant::now();
            let start = (now < deadline).then(|| {
                attempts += 1;
                (attempts, self.policy.attempt_timeout.min(deadline - now))
            });
            let body = body.clone();
            async move {
                match start {
                    Some((attempt, limit)) => self
                        .attempt(op, key_id, body, attempt, limit)
                        .await
                        .map_err(Stop::Failed),
                    None => Err(Stop::Late),
                }
            }
        })
        .retry(self.policy.backoff())
        .sleep(tokio::time::sleep)
        .when(|stop| matches!(stop, Stop::Failed(f) if f.retryable()))
        // A pause is taken only if it ends before the deadline.
        .adjust(|_, pause| pause.filter(|p| Instant::now() + *p < deadline))
        .notify(|stop, pause| {
            if let Stop::Failed(failure) = stop {
                tracing::debug!(
                    op = op.name(),
                    attempt = attempts_of(failure),
                    pause_ms = pause.as_millis() as u64,
                    "jdcloud KMS call failed, retrying: {}",
                    describe_failure(failure)
                );
                paused_after = Some(failure.clone());
            }
        })
        .await;
        match outcome {
            Ok(answer) => Ok(answer),
            Err(Stop::Failed(failure)) => Err(failure),
            Err(Stop::Late) => Err(paused_after.unwrap_or_else(|| Failure::NoAnswer {
                detail: format!(
                    "no attempt fit in the {} ms deadline",
                    self.policy.deadline.as_millis()
                ),
                attempts,
            })),
        }
    }

    /// Attempt number `attempt`, given at most `limit`: a final answer, or a failure that may pass (no
    /// answer, 5xx, 429).
    async fn attempt(
        &self,
        op: Op,
        key_id: &str,
        body: Bytes,
        attempt: u32,
        limit: Duration,
    ) -> Result<Answer, Failure> {
        match tokio::time::timeout(limit, self.once(op, key_id, body)).await {
            Ok(Ok((status, body)))
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Err(Failure::Status {
                    answer_status: status,
                    body,
                    attempts: attempt,
                })
            }
            Ok(Ok((status, body))) => Ok(Answer {
                status,
                body,
                attempts: attempt,
            }),
            Ok(Err(NoAnswer {
                detail,
                retry: true,
            })) => Err(Failure::NoAnswer {
                detail,
                attempts: attempt,
            }),
            Ok(Err(NoAnswer {
                detail,
                retry: false,
            })) => Err(Failure::Final {
                detail,
                attempts: attempt,
            }),
            Err(_) => Err(Failure::NoAnswer {
                detail: format!("no answer within {} ms", limit.as_millis()),
                attempts: attempt,
            }),
        }
    }

    /// One signed attempt: the status and body of whatever answered, or why nothing did.
    async fn once(
        &self,
        op: Op,
        key_id: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), NoAnswer> {
        let date = sign::format_date(SystemTime::now());
        let nonce = sign::new_nonce();
        let path = wire_path(self.version, key_id, op.action());
        let method = op.method();
        let headers = [
            ("content-type", "application/json"),
            (HEADER_DATE, date.as_str()),
            (HEADER_NONCE, nonce.as_str()),
        ];
        let authorization = {
            let req = sign::Request {
                method: method.as_str(),
                host: &self.host,
                path: &path,
                query: "",
                headers: &headers,
                body: &body,
            };
            let creds = Credentials {
                access_key: self.access_key.expose(),
                secret_key: self.secret_key.expose(),
            };
            let value = sign::authorization(
                self.version,
                &req,
                &date,
                sign::REGION,
                sign::SERVICE,
                &creds,
            );
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                NoAnswer::retry("the access key is not valid in an HTTP header".to_string())
            })?;
            value.set_sensitive(true);
            value
        };
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("{}://{}{}", self.scheme, self.endpoint, path))
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .header(HEADER_DATE, &date)
            .header(HEADER_NONCE, &nonce)
            .header(AUTHORIZATION, authorization)
            .header(USER_AGENT, self.user_agent.clone());
        if self.version == SignVersion::V3 {
            // What the Python SDK adds after signing (unsigned).
            builder = builder
                .header(HEADER_CONTENT_SHA256, sign::content_sha256(&body))
                .header(
                    sign::algorithm(SignVersion::V3),
                    sign::algorithm(SignVersion::V3),
                );
        }
        // Plain http through a proxy: the request itself carries the proxy's credentials (through a
        // CONNECT tunnel only the CONNECT does, and the endpoint never sees them).
        let proxy = match self.connector.route() {
            Route::Proxy(p) => Some(p),
            Route::Direct { .. } => None,
        };
        if self.scheme == "http"
            && let Some(auth) = proxy.and_then(|p| p.auth())
        {
            builder = builder.header(PROXY_AUTHORIZATION, auth.clone());
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| NoAnswer::retry(format!("cannot build the request: {e}")))?;
        let response = self.http.request(request).await.map_err(|e| {
            // The connector's own error says what failed (naming the proxy or the TLS peer) and whether
            // another attempt can help; hyper's wrapper around it adds nothing.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if let Some(c) = s.downcast_ref::<ConnectError>() {
                    return NoAnswer {
                        detail: c.to_string(),
                        retry: c.retry,
                    };
                }
                source = s.source();
            }
            NoAnswer::retry(format!("{}: {}", self.base_url(), error_chain(&e)))
        })?;
        let status = response.status();
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED
            && let Some(p) = proxy
        {
            let hint = if p.auth().is_some() {
                "the proxy refused the credentials"
            } else {
                "no credentials were configured (KmsProxyCredentialsFile)"
            };
            return Err(NoAnswer {
                detail: format!(
                    "proxy {} answered 407 Proxy Authentication Required: {hint}",
                    p.host_port()
                ),
                retry: false,
            });
        }
        let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                NoAnswer::retry(format!(
                    "{}: reading the answer: {}",
                    self.base_url(),
                    error_chain(&*e)
                ))
            })?;
        let bytes: Vec<u8> = collected.to_bytes().into();
        Ok((status, Zeroizing::new(bytes)))
    }
}

/// Why a retry loop stopped short of a final answer.
enum Stop {
    /// An attempt failed in a way that may pass (retried while attempts and time remain).
    Failed(Failure),
    /// The deadline passed before the next attempt could start.
    Late,
}

pub(crate) fn attempts_of(f: &Failure) -> u32 {
    match f {
        Failure::Status { attempts, .. }
        | Failure::NoAnswer { attempts, .. }
        | Failure::Final { attempts, .. } => *attempts,
    }
}

/// A short text for a failure, for logs and errors.
pub(crate) fn describe_failure(f: &Failure) -> String {
    match f {
        Failure::Status {
            answer_status,
            body,
            ..
        } => match super::wire::error_of(body) {
            Some(e) => format!("HTTP {} {e}", answer_status.as_u16()),
            None => format!("HTTP {}", answer_status.as_u16()),
        },
        Failure::NoAnswer { detail, .. } | Failure::Final { detail, .. } => detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn host_header_drops_default_ports_only() {
        assert_eq!(host_header("kms.example.com"), "kms.example.com");
        assert_eq!(host_header("kms.example.com:80"), "kms.example.com");
        assert_eq!(host_header("kms.example.com:443"), "kms.example.com");
        assert_eq!(host_header("kms.example.com:8443"), "kms.example.com:8443");
        assert_eq!(host_header("127.0.0.1:4430"), "127.0.0.1:4430");
        assert_eq!(host_header("[::1]:443"), "[::1]");
        assert_eq!(host_header("[::1]:8080"), "[::1]:8080");
    }

    #[test]
    fn wire_paths_follow_each_sdk() {
        assert_eq!(
            wire_path(SignVersion::V3, "k-1", Some("Encrypt")),
            "/v1/key/k-1:Encrypt"
        );
        assert_eq!(
            wire_path(SignVersion::V2, "k-1", Some("Decrypt")),
            "/v1/key/k-1%3ADecrypt"
        );
        assert_eq!(
            wire_path(SignVersion::V3, "a b/c:d", None),
            "/v1/key/a%20b%2Fc%3Ad"
        );
    }

    #[test]
    fn default_policy_fits_kube_apiserver_deadline() {
        let p = RetryPolicy::for_timeout(Duration::from_millis(2000));
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.deadline, Duration::from_millis(2800));
        assert!(p.deadline < Duration::from_secs(3));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let policy = RetryPolicy::for_timeout(Duration::from_millis(500));
        assert_eq!(policy.backoff().build().count(), 2, "3 attempts, 2 pauses");
        for round in 0..1000 {
            let pauses = policy.backoff().with_max_times(10).build();
            for (n, d) in (1u32..).zip(pauses) {
                let full = Duration::from_millis(50)
                    .saturating_mul(1 << (n - 1))
                    .min(Duration::from_millis(400));
                assert!(
                    d >= full / 2 && d <= full,
                    "round {round}, attempt {n}: {d:?} vs {full:?}"
                );
            }
        }
        let draws: std::collections::HashSet<_> = (0..20)
            .map(|_| policy.backoff().with_max_times(3).build().nth(2))
            .collect();
        assert!(draws.len() > 1, "backoff is not jittered");
    }

    #[test]
    fn bad_schema_or_endpoint_is_a_config_error() {
        let mk = |schema: &str, endpoint: &str| {
            KmsClient::new(
                schema,
                endpoint,
                SecretString::new("a".into()),
                SecretString::new("s".into()),
                SignVersion::V3,
                RetryPolicy::for_timeout(Duration::from_millis(500)),
                &KmsNetwork::default(),
                &|_| None,
            )
        };
        assert!(mk("ftp", "h").is_err());
        assert!(mk("http", "").is_err());
        assert!(mk("http", "http://h").is_err());
        assert!(mk("http", "h/x").is_err());
        assert!(mk("http", "user@h").is_err());
        assert!(mk("https", "kms.cn-north-1.jdcloud-api.com").is_ok());
        assert!(mk("http", "kms.internal.cn-north-1.jdcloud-api.com:8080").is_ok());
    }
}
