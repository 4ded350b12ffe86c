//! A faithful fake of JD Cloud KMS for tests and benchmarks: a real HTTP/1.1 server on `127.0.0.1`, with
//! the real API's paths, JSON and error envelope, that checks every request as JD Cloud's gateway does
//! (signature, date, nonce) and encrypts with a real cipher of its own.
//!
//! - `POST /v1/key/{keyId}:Encrypt` `{"keyId","plaintext":base64}` → `{"requestId","result":{"ciphertextBlob"}}`
//! - `POST /v1/key/{keyId}:Decrypt` `{"keyId","ciphertextBlob"}` → `{"requestId","result":{"plaintext"}}`
//! - `GET /v1/key/{keyId}` (DescribeKey) → `{"requestId","result":{"keyInfo":{…,"keyStatus":0|1|2}}}`
//! - errors: HTTP status ≥ 400 and `{"requestId","error":{"code":<status>,"status":"NAME","message":"…"}}`.
//!
//! The `:` before the action may come as is or as `%3A`. Blobs are base64 of `0x01 || nonce(12) ||
//! SM4-GCM(master key, nonce, aad = keyId, plaintext)`, with one fixed master key for every fake (so a blob
//! outlives the fake that made it). Switches inject faults; counters (per operation, every request that
//! reached a route, before any check) tell tests how many remote calls were made.
//!
//! The fake shares no code with the plugin: its cipher is RustCrypto's SM4 in their generic GCM, and the
//! gateway's signature check is [`crate::jdcloud_sig`].
//!
//! With [`FakeJdCloud::start_tls`] it speaks HTTPS instead (rustls, TLS 1.2 and 1.3, a certificate of
//! [`crate::pki`]), and counts connections, completed handshakes and refused ones, so that tests can
//! check trust decisions and proxy routes on a real TLS server.
//!
//! Whatever a client sends, the fake answers (or drops the connection): no input makes it panic. It
//! panics only where a test cannot go on (no loopback port to bind, no OS random numbers), as each
//! function's `# Panics` says.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{AesGcm, KeyInit};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sm4::Sm4;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::jdcloud_sig::{self, Authorization, Received};
use crate::pki::ServerIdentity;

/// SM4 in GCM with a 96-bit nonce and a 128-bit tag.
type Sm4Gcm = AesGcm<Sm4, U12>;
/// Nonce length of a blob.
const NONCE_LEN: usize = 12;

/// Access key id of [`FakeJdCloud::start`].
pub const FAKE_ACCESS_KEY: &str = "FAKEAK0123456789ABCDEF0123456789";
/// Secret key of [`FakeJdCloud::start`].
pub const FAKE_SECRET_KEY: &str = "FAKESK-not-a-real-secret-0123456789abcdef";
/// Key id of the key [`FakeJdCloud::start`] creates (enabled).
pub const FAKE_KEY_ID: &str = "5c8a3f2e-6b1d-4e9f-8a7c-2d4b6e8f0a1c";
/// The fixed master key of every fake (so blobs outlive a fake's restart).
const MASTER_KEY: [u8; 16] = *b"fake-jdcloud-kms";
/// Blob format version byte.
const BLOB_VERSION: u8 = 0x01;
/// A second version byte the fake opens like the first: `G`, so that a test can make a blob whose bytes
/// begin with `GMK` ([`FakeJdCloud::legacy_ciphertext_with_prefix`]). Real JD Cloud blobs are opaque and
/// may begin with anything.
const BLOB_VERSION_G: u8 = b'G';
/// How far a request's `x-jdcloud-date` may be from the fake's clock.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// Largest plaintext Encrypt accepts (JD Cloud's limit for symmetric keys).
const MAX_PLAINTEXT: usize = 4096;

/// A fault the fake injects into answers, after the request passed the gateway checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 `INTERNAL_ERROR`.
    Status500,
    /// HTTP 503 `SERVICE_UNAVAILABLE`.
    Status503,
    /// HTTP 429 `RATE_LIMIT` (too many requests).
    Status429,
    /// The connection is closed without an answer.
    DropConnection,
    /// HTTP 200 whose body is truncated JSON.
    GarbageJson,
    /// HTTP 200 `{"requestId":…,"result":{}}`: no value at all.
    EmptyResult,
    /// HTTP 200 whose value is an empty string (`"ciphertextBlob":""`, `"plaintext":""`).
    EmptyValue,
    /// Decrypt answers 200 with a plaintext one byte short (other operations answer normally).
    ShortPlaintext,
}

/// Counters of what the fake saw, each a plain number at the time of reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Requests that reached the Encrypt route (whatever came of them).
    pub encrypt: u64,
    /// Requests that reached the Decrypt route.
    pub decrypt: u64,
    /// Requests that reached the DescribeKey route.
    pub describe: u64,
    /// Requests to any other path.
    pub other: u64,
    /// Requests refused for a missing or wrong signature, unknown access key or bad date (401).
    pub bad_signature: u64,
    /// Requests refused for a nonce already seen (401).
    pub replayed_nonce: u64,
    /// Answers replaced by a [`Fault`] (or delayed by [`FakeJdCloud::set_delay`]: not counted here).
    pub faults: u64,
    /// TCP connections accepted (HTTP or HTTPS): with a proxy in between, each one came through it.
    pub connections: u64,
    /// TLS handshakes completed ([`FakeJdCloud::start_tls`] only).
    pub tls_handshakes: u64,
    /// TLS handshakes that failed: the client refused the certificate, or spoke something else.
    pub tls_failures: u64,
}

impl Counts {
    /// Encrypt + Decrypt + DescribeKey + other.
    pub fn total(&self) -> u64 {
        self.encrypt + self.decrypt + self.describe + self.other
    }
}

#[derive(Default)]
struct Counters {
    encrypt: AtomicU64,
    decrypt: AtomicU64,
    describe: AtomicU64,
    other: AtomicU64,
    bad_signature: AtomicU64,
    replayed_nonce: AtomicU64,
    faults: AtomicU64,
    connections: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_failures: AtomicU64,
}

#[derive(Default)]
struct FaultPlan {
    fault: Option<Fault>,
    /// `None`: every request until cleared; `Some(n)`: the next `n` requests.
    remaining: Option<u32>,
}

struct State {
    access_key: String,
    first_key: String,
    secret_key: String,
    /// key id → keyStatus (0 enabled, 1 disabled, 2 pending deletion).
    keys: Mutex<HashMap<String, i64>>,
    master: Sm4Gcm,
    nonces: Mutex<HashSet<String>>,
    counters: Counters,
    plan: Mutex<FaultPlan>,
    delay_ms: AtomicU64,
    request_seq: AtomicU64,
    /// Bumped to close every open connection.
    kill: watch::Sender<u64>,
    /// Set: HTTPS with this certificate.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Cmd {
    SetDown(bool, oneshot::Sender<()>),
}

/// A running fake. Dropping it stops the server and closes its connections.
pub struct FakeJdCloud {
    state: Arc<State>,
    addr: SocketAddr,
    cmds: mpsc::UnboundedSender<Cmd>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for FakeJdCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeJdCloud")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeJdCloud {
    fn drop(&mut self) {
        self.server.abort();
        self.state.kill.send_modify(|g| *g += 1);
    }
}

impl FakeJdCloud {
    /// Starts a fake on `127.0.0.1:<free port>` with [`FAKE_ACCESS_KEY`]/[`FAKE_SECRET_KEY`] and one
    /// enabled key, [`FAKE_KEY_ID`]. Must be called inside a Tokio runtime (the server runs on it).
    ///
    /// # Panics
    /// If no port of `127.0.0.1` can be bound.
    pub async fn start() -> FakeJdCloud {
        Self::start_with(FAKE_ACCESS_KEY, FAKE_SECRET_KEY, FAKE_KEY_ID).await
    }

    /// Starts a fake that accepts one credential pair and has one enabled key.
    ///
    /// # Panics
    /// If no port of `127.0.0.1` can be bound.
    pub async fn start_with(access_key: &str, secret_key: &str, key_id: &str) -> FakeJdCloud {
        Self::start_inner(access_key, secret_key, key_id, None).await
    }

    /// [`FakeJdCloud::start`], but serving HTTPS with `identity` (TLS 1.2 and 1.3, ALPN `http/1.1`).
    /// `KmsSchema` is then `https`, and a client must trust `identity`'s CA and connect by one of its
    /// names (the endpoint is `127.0.0.1:PORT`, so a leaf for `127.0.0.1` is what a client accepts).
    ///
    /// # Panics
    /// If no port of `127.0.0.1` can be bound, or rustls refuses the identity.
    pub async fn start_tls(identity: &ServerIdentity) -> FakeJdCloud {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("TLS 1.2 and 1.3 with ring")
            .with_no_client_auth()
            .with_single_cert(identity.chain.clone(), identity.private_key())
            .expect("the fake's certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_inner(
            FAKE_ACCESS_KEY,
            FAKE_SECRET_KEY,
            FAKE_KEY_ID,
            Some(acceptor),
        )
        .await
    }

    async fn start_inner(
        access_key: &str,
        secret_key: &str,
        key_id: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeJdCloud {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("fake JD Cloud KMS: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake JD Cloud KMS: local address");
        let (kill, _) = watch::channel(0u64);
        let state = Arc::new(State {
            access_key: access_key.to_string(),
            first_key: key_id.to_string(),
            secret_key: secret_key.to_string(),
            keys: Mutex::new(HashMap::from([(key_id.to_string(), 0)])),
            master: Sm4Gcm::new(&Array::from(MASTER_KEY)),
            nonces: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            plan: Mutex::new(FaultPlan::default()),
            delay_ms: AtomicU64::new(0),
            request_seq: AtomicU64::new(0),
            kill,
            tls,
        });
        let (cmds, rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(listener, addr, state.clone(), rx));
        FakeJdCloud {
            state,
            addr,
            cmds,
            server,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, for `KmsEndpoint` (with `KmsSchema` [`FakeJdCloud::schema`]).
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// `https` for a fake of [`FakeJdCloud::start_tls`], else `http`: its `KmsSchema`.
    pub fn schema(&self) -> &'static str {
        if self.state.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The access key id the fake accepts.
    pub fn access_key(&self) -> &str {
        &self.state.access_key
    }

    /// The secret key of [`FakeJdCloud::access_key`].
    pub fn secret_key(&self) -> &str {
        &self.state.secret_key
    }

    /// The key the fake started with ([`FAKE_KEY_ID`] for [`FakeJdCloud::start`]).
    pub fn key_id(&self) -> &str {
        &self.state.first_key
    }

    /// The plugin's provider fields for key `key_id` of this fake, in the config file's names:
    /// `AccessKey`, `SecretKey`, `KmsEndpoint`, `KmsKeyId` and `KmsSchema` ([`FakeJdCloud::schema`]). A
    /// `PreviousKeys`
    /// entry as it is; add `GRPCSocketPath` and the like for a whole config.
    pub fn config_json(&self, key_id: &str) -> Value {
        json!({
            "AccessKey": self.state.access_key,
            "SecretKey": self.state.secret_key,
            "KmsEndpoint": self.endpoint(),
            "KmsKeyId": key_id,
            "KmsSchema": self.schema(),
        })
    }

    /// JD Cloud's own plugin config file, pointing at this fake, as their users have it:
    /// [`FakeJdCloud::config_json`] of the first key plus `GRPCSocketPath`.
    pub fn seed_config_json(&self, socket_path: &str) -> String {
        let mut config = self.config_json(self.key_id());
        if let Some(fields) = config.as_object_mut() {
            fields.insert("GRPCSocketPath".into(), Value::from(socket_path));
        }
        config.to_string()
    }

    /// Creates another enabled key (a second master for rotation tests).
    pub fn add_key(&self, key_id: &str) {
        lock(&self.state.keys).insert(key_id.to_string(), 0);
    }

    /// Sets a key's `keyStatus`: 0 enabled, 1 disabled, 2 pending deletion. A disabled or pending key
    /// answers Encrypt and Decrypt with 400 `FAILED_PRECONDITION`, as JD Cloud does.
    pub fn set_key_status(&self, key_id: &str, status: i64) {
        lock(&self.state.keys).insert(key_id.to_string(), status);
    }

    /// Disables (`false`) or enables (`true`) every key.
    pub fn set_keys_enabled(&self, enabled: bool) {
        for status in lock(&self.state.keys).values_mut() {
            *status = if enabled { 0 } else { 1 };
        }
    }

    /// Injects `fault` into every request until [`FakeJdCloud::clear_fault`].
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.plan) = FaultPlan {
            fault: Some(fault),
            remaining: None,
        };
    }

    /// Injects `fault` into the next `n` requests only, then answers normally again.
    pub fn fail_next(&self, n: u32, fault: Fault) {
        *lock(&self.state.plan) = FaultPlan {
            fault: Some(fault),
            remaining: Some(n),
        };
    }

    /// No more faults.
    pub fn clear_fault(&self) {
        *lock(&self.state.plan) = FaultPlan::default();
    }

    /// Delays every answer by `delay` (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Down: the listening socket is closed (connections are refused) and open connections are cut.
    /// Up again: the same port listens again. Returns once the change is in effect.
    ///
    /// # Panics
    /// If the port cannot be bound again within 5 s (another process took it), which also stops the
    /// server.
    pub async fn set_down(&self, down: bool) {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::SetDown(down, tx))
            .expect("fake JD Cloud KMS server is running");
        rx.await.expect("fake JD Cloud KMS changed state");
    }

    /// Closes every open connection (clients must reconnect); the listener stays.
    pub fn cut_connections(&self) {
        self.state.kill.send_modify(|g| *g += 1);
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        let c = &self.state.counters;
        Counts {
            encrypt: c.encrypt.load(Ordering::SeqCst),
            decrypt: c.decrypt.load(Ordering::SeqCst),
            describe: c.describe.load(Ordering::SeqCst),
            other: c.other.load(Ordering::SeqCst),
            bad_signature: c.bad_signature.load(Ordering::SeqCst),
            replayed_nonce: c.replayed_nonce.load(Ordering::SeqCst),
            faults: c.faults.load(Ordering::SeqCst),
            connections: c.connections.load(Ordering::SeqCst),
            tls_handshakes: c.tls_handshakes.load(Ordering::SeqCst),
            tls_failures: c.tls_failures.load(Ordering::SeqCst),
        }
    }

    /// Sets every counter back to 0.
    pub fn reset_counts(&self) {
        let c = &self.state.counters;
        for a in [
            &c.encrypt,
            &c.decrypt,
            &c.describe,
            &c.other,
            &c.bad_signature,
            &c.replayed_nonce,
            &c.faults,
            &c.connections,
            &c.tls_handshakes,
            &c.tls_failures,
        ] {
            a.store(0, Ordering::SeqCst);
        }
    }

    /// The `ciphertextBlob` this fake's Encrypt of `plaintext` under `key_id` would return (fresh nonce).
    ///
    /// # Panics
    /// If the OS has no random numbers.
    pub fn encrypt_blob(&self, key_id: &str, plaintext: &[u8]) -> String {
        base64_encode(&self.state.seal(key_id, plaintext))
    }

    /// A ciphertext as JD Cloud's own KMS plugin stored it: the raw (base64-decoded) `ciphertextBlob` of
    /// an Encrypt of `payload` under the fake's first key.
    ///
    /// # Panics
    /// If the OS has no random numbers.
    pub fn legacy_ciphertext(&self, payload: &[u8]) -> Vec<u8> {
        self.state.seal(self.key_id(), payload)
    }

    /// [`FakeJdCloud::legacy_ciphertext`], but the raw bytes begin with `prefix` (1 to 13 bytes, the first
    /// `G`, e.g. `GMK\x01\x01`: a legacy blob that looks like our format 1).
    ///
    /// # Panics
    /// On another prefix (a mistake in the test), or if the OS has no random numbers.
    pub fn legacy_ciphertext_with_prefix(&self, payload: &[u8], prefix: &[u8]) -> Vec<u8> {
        let (version, rest) = match prefix.split_first() {
            Some((&version, rest)) if version == BLOB_VERSION_G && rest.len() <= NONCE_LEN => {
                (version, rest)
            }
            _ => panic!("the prefix must be G and at most {NONCE_LEN} more bytes"),
        };
        let mut nonce = random_nonce();
        for (n, p) in nonce.iter_mut().zip(rest) {
            *n = *p;
        }
        self.state.seal_blob(version, nonce, self.key_id(), payload)
    }
}

/// A fresh random nonce.
///
/// # Panics
/// If the OS has no random numbers (nothing in a test can go on without them).
fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("OS random numbers");
    nonce
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut tries = 0;
    loop {
        match bind(addr) {
            Ok(l) => return l,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("fake JD Cloud KMS: cannot listen on {addr} again: {e}"),
        }
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<State>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut listener = Some(listener);
    loop {
        let cmd = match &listener {
            Some(l) => {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((stream, _)) = accepted {
                            spawn_connection(stream, state.clone());
                        }
                        continue;
                    }
                    cmd = cmds.recv() => cmd,
                }
            }
            None => cmds.recv().await,
        };
        match cmd {
            None => return,
            Some(Cmd::SetDown(true, ack)) => {
                listener = None;
                state.kill.send_modify(|g| *g += 1);
                let _ = ack.send(());
            }
            Some(Cmd::SetDown(false, ack)) => {
                if listener.is_none() {
                    listener = Some(rebind(addr).await);
                }
                let _ = ack.send(());
            }
        }
    }
}

/// The connection is to be closed without an answer.
#[derive(Debug)]
struct DropConnection;
impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fake")
    }
}
impl std::error::Error for DropConnection {}

fn spawn_connection(stream: TcpStream, state: Arc<State>) {
    state.counters.connections.fetch_add(1, Ordering::SeqCst);
    let mut kill = state.kill.subscribe();
    tokio::spawn(async move {
        let _ = stream.set_nodelay(true);
        let served = async {
            match &state.tls {
                None => serve_http(stream, state.clone()).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => {
                        state.counters.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                        serve_http(tls, state.clone()).await;
                    }
                    Err(_) => {
                        state.counters.tls_failures.fetch_add(1, Ordering::SeqCst);
                    }
                },
            }
        };
        tokio::select! {
            _ = served => {}
            _ = kill.changed() => {}
        }
    });
}

/// HTTP/1.1 with keep-alive on one connection, plain or inside TLS.
async fn serve_http<S>(io: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { state.handle(req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Encrypt,
    Decrypt,
    Describe,
}

type Answer = Result<Response<Full<Bytes>>, DropConnection>;

impl State {
    fn seal(&self, key_id: &str, plaintext: &[u8]) -> Vec<u8> {
        self.seal_blob(BLOB_VERSION, random_nonce(), key_id, plaintext)
    }

    fn seal_blob(
        &self,
        version: u8,
        nonce: [u8; NONCE_LEN],
        key_id: &str,
        plaintext: &[u8],
    ) -> Vec<u8> {
        let payload = Payload {
            msg: plaintext,
            aad: key_id.as_bytes(),
        };
        // GCM refuses only messages over 64 GiB; the fake seals at most a request body (64 KiB).
        let sealed = self
            .master
            .encrypt(&Array::from(nonce), payload)
            .expect("SM4-GCM seals any message under 64 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(version);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    fn open(&self, key_id: &str, blob: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = blob.split_first()?;
        if ![BLOB_VERSION, BLOB_VERSION_G].contains(&version) {
            return None;
        }
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let payload = Payload {
            msg: sealed,
            aad: key_id.as_bytes(),
        };
        self.master.decrypt(&Array::from(*nonce), payload).ok()
    }

    fn request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::SeqCst);
        format!("fake{n:012x}")
    }

    fn answer(&self, status: StatusCode, body: Value) -> Answer {
        self.raw_answer(status, body.to_string())
    }

    fn raw_answer(&self, status: StatusCode, body: String) -> Answer {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = http::HeaderValue::from_str(&self.request_id()) {
            headers.insert("x-jdcloud-request-id", v);
        }
        Ok(resp)
    }

    fn error(&self, status: StatusCode, name: &str, message: &str) -> Answer {
        self.answer(
            status,
            json!({
                "requestId": self.request_id(),
                "error": {"code": status.as_u16(), "status": name, "message": message},
            }),
        )
    }

    fn ok(&self, result: Value) -> Answer {
        self.answer(
            StatusCode::OK,
            json!({"requestId": self.request_id(), "result": result}),
        )
    }

    fn take_fault(&self) -> Option<Fault> {
        let mut plan = lock(&self.plan);
        let fault = plan.fault?;
        match plan.remaining {
            None => {}
            Some(0) => {
                *plan = FaultPlan::default();
                return None;
            }
            Some(n) => {
                plan.remaining = Some(n - 1);
                if n == 1 {
                    *plan = FaultPlan::default();
                }
            }
        }
        self.counters.faults.fetch_add(1, Ordering::SeqCst);
        Some(fault)
    }

    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "request body too large",
                );
            }
        };

        // Route: /v1/key/{keyId}[:Action], the ':' possibly percent-encoded.
        let raw_path = parts.uri.path();
        let decoded = jdcloud_sig::percent_decode(raw_path, false);
        let route = decoded.strip_prefix("/v1/key/").and_then(|rest| {
            let (key, action) = match rest.rsplit_once(':') {
                Some((k, a)) => (k, Some(a)),
                None => (rest, None),
            };
            let op = match (&parts.method, action) {
                (&Method::POST, Some("Encrypt")) => Op::Encrypt,
                (&Method::POST, Some("Decrypt")) => Op::Decrypt,
                (&Method::GET, None) => Op::Describe,
                _ => return None,
            };
            (!key.is_empty() && !key.contains('/')).then(|| (op, key.to_string()))
        });
        let Some((op, key_id)) = route else {
            self.counters.other.fetch_add(1, Ordering::SeqCst);
            return self.error(StatusCode::NOT_FOUND, "NOT_FOUND", "api not found");
        };
        match op {
            Op::Encrypt => &self.counters.encrypt,
            Op::Decrypt => &self.counters.decrypt,
            Op::Describe => &self.counters.describe,
        }
        .fetch_add(1, Ordering::SeqCst);

        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }

        // The gateway: signature, date, nonce.
        if let Some(answer) = self.authenticate(&parts, &body) {
            return answer;
        }

        let fault = self.take_fault();
        match fault {
            Some(Fault::Status500) => {
                return self.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "internal error",
                );
            }
            Some(Fault::Status503) => {
                return self.error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "service unavailable",
                );
            }
            Some(Fault::Status429) => {
                return self.error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMIT",
                    "request rate limit exceeded",
                );
            }
            Some(Fault::DropConnection) => return Err(DropConnection),
            Some(Fault::GarbageJson) => {
                return self.raw_answer(
                    StatusCode::OK,
                    format!(
                        r#"{{"requestId":"{}","result":{{"ciphertextBlob":"QUJD"#,
                        self.request_id()
                    ),
                );
            }
            Some(Fault::EmptyResult) => return self.ok(json!({})),
            _ => {}
        }

        let status = lock(&self.keys).get(&key_id).copied();
        let Some(status) = status else {
            return self.error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("key {key_id} not found"),
            );
        };
        match op {
            Op::Describe => {
                if fault == Some(Fault::EmptyValue) {
                    return self.ok(json!({"keyInfo": {}}));
                }
                self.ok(json!({"keyInfo": {
                    "keyId": key_id,
                    "keyName": "fake-kms-key",
                    "keyStatus": status,
                    "createTime": "2024-01-01T00:00:00Z",
                    "keyDesc": "fake JD Cloud KMS key",
                    "rotationCycle": 0,
                    "deleteTime": "",
                }}))
            }
            Op::Encrypt | Op::Decrypt if status != 0 => {
                let why = if status == 2 {
                    "key is pending deletion"
                } else {
                    "key is disabled"
                };
                self.error(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", why)
            }
            Op::Encrypt => {
                let Some(plaintext) =
                    json_field(&body, "plaintext").and_then(|t| base64_decode(&t))
                else {
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_ARGUMENT",
                        "plaintext is not base64",
                    );
                };
                if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_ARGUMENT",
                        "plaintext length out of range",
                    );
                }
                if fault == Some(Fault::EmptyValue) {
                    return self.ok(json!({"ciphertextBlob": ""}));
                }
                self.ok(json!({"ciphertextBlob": base64_encode(&self.seal(&key_id, &plaintext))}))
            }
            Op::Decrypt => {
                let plaintext = json_field(&body, "ciphertextBlob")
                    .and_then(|t| base64_decode(&t))
                    .and_then(|blob| self.open(&key_id, &blob));
                let Some(mut plaintext) = plaintext else {
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_ARGUMENT",
                        "invalid ciphertextBlob: decrypt failed",
                    );
                };
                match fault {
                    Some(Fault::EmptyValue) => return self.ok(json!({"plaintext": ""})),
                    Some(Fault::ShortPlaintext) => {
                        plaintext.pop();
                    }
                    _ => {}
                }
                self.ok(json!({"plaintext": base64_encode(&plaintext)}))
            }
        }
    }

    /// The gateway's checks; `Some` is the 401 answer of a request that fails them.
    fn authenticate(&self, parts: &http::request::Parts, body: &[u8]) -> Option<Answer> {
        let deny = |counter: &AtomicU64, message: &str| {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(self.error(StatusCode::UNAUTHORIZED, "ACCESS_ERROR", message))
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let Some(auth) = header("authorization").and_then(Authorization::parse) else {
            return deny(
                &self.counters.bad_signature,
                "authorization header is missing or malformed",
            );
        };
        if auth.access_key != self.access_key {
            return deny(&self.counters.bad_signature, "invalid accesskey");
        }
        let (Some(date), Some(nonce), Some(_)) = (
            header(jdcloud_sig::DATE_HEADER),
            header(jdcloud_sig::NONCE_HEADER),
            header("host"),
        ) else {
            return deny(
                &self.counters.bad_signature,
                "x-jdcloud-date, x-jdcloud-nonce and host are required",
            );
        };
        for required in ["host", jdcloud_sig::DATE_HEADER, jdcloud_sig::NONCE_HEADER] {
            if !auth.signed_headers.iter().any(|h| h == required) {
                return deny(
                    &self.counters.bad_signature,
                    "host, x-jdcloud-date and x-jdcloud-nonce must be signed",
                );
            }
        }
        let skew_ok = jdcloud_sig::parse_date(date).is_some_and(|t| {
            let now = SystemTime::now();
            let skew = now
                .duration_since(t)
                .or_else(|_| t.duration_since(now))
                .unwrap_or(Duration::MAX);
            skew <= MAX_CLOCK_SKEW
        });
        if !skew_ok {
            return deny(
                &self.counters.bad_signature,
                "x-jdcloud-date is invalid or too far from now",
            );
        }
        // Every header as received; a value that is not text is signed as empty (no SDK sends one).
        let headers: Vec<(&str, &str)> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or("")))
            .collect();
        let req = Received {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &headers,
            body,
        };
        if !jdcloud_sig::verify(&auth, &req, &self.secret_key) {
            return deny(&self.counters.bad_signature, "sign result is not same");
        }
        if !lock(&self.nonces).insert(nonce.to_string()) {
            return deny(&self.counters.replayed_nonce, "nonce has been used");
        }
        None
    }
}

/// A string field of a JSON object body.
fn json_field(body: &[u8], name: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get(name)?.as_str().map(str::to_string)
}

#[cfg(test)]
#[path = "fake_jdcloud_tests.rs"]
mod tests;
