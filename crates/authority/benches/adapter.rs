//! What the `:authority` adapter costs: `cargo bench -p gm-kms-authority`.
//!
//! 1. The adapter's own CPU per call: a tonic client's byte stream (unary `Encrypt` calls with a 1 KiB
//!    payload and a fresh `grpc-timeout` each call, as grpc-go sends) is recorded once, then read from
//!    memory with and without the adapter. Other load on the machine hardly moves this figure.
//! 2. Tonic unary calls per second, and process CPU per call (client and server together), to an echo
//!    server on a unix socket with and without the adapter, at 1 and 16 concurrent callers: medians of
//!    short interleaved rounds, so that other load on the machine hits both sides alike.
//!
//! Run without `--bench` (as `cargo test --all-targets` does), or with `GM_KMS_BENCH_SMOKE` set, it makes
//! a smoke pass of about a second, so that the benchmark cannot rot. The figures of a smoke pass mean
//! nothing.
//!
//! The gRPC service is written by hand (one method, messages shaped like the KMS v1beta1 `Encrypt`), so
//! that this crate needs no protobuf code generation.

use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use gm_kms_authority::normalize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The method every call goes to.
const ENCRYPT: &str = "/v1beta1.KeyManagementService/Encrypt";

/// How much to measure.
struct Plan {
    /// Calls recorded for the in-memory replay.
    recorded_calls: u64,
    /// Times the recording is replayed each way.
    replays: u32,
    /// Callers at once, one row each.
    concurrency: &'static [usize],
    /// Measured rounds each way per row, and how long each lasts.
    rounds: usize,
    round: Duration,
    /// Unmeasured round each way before a row.
    warm_up: Duration,
}

const FULL: Plan = Plan {
    recorded_calls: 5000,
    replays: 20,
    concurrency: &[1, 16],
    rounds: 7,
    round: Duration::from_secs(1),
    warm_up: Duration::from_millis(500),
};

const SMOKE: Plan = Plan {
    recorded_calls: 200,
    replays: 2,
    concurrency: &[1, 16],
    rounds: 1,
    round: Duration::from_millis(100),
    warm_up: Duration::from_millis(50),
};

fn main() {
    let full = std::env::args().any(|a| a == "--bench")
        && std::env::var_os("GM_KMS_BENCH_SMOKE").is_none();
    let plan = if full { &FULL } else { &SMOKE };
    if !full {
        println!("smoke pass (run with `cargo bench` for real figures)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        adapter_cpu_per_call(dir.path(), plan).await;
        unary_throughput(dir.path(), plan).await;
    });
}

// ---------------------------------------------------------------------------------------------------
// A one-method gRPC service, by hand

/// Shaped like KMS v1beta1 `EncryptRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct EncryptRequest {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(bytes = "vec", tag = "2")]
    plain: Vec<u8>,
}

/// Shaped like KMS v1beta1 `EncryptResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct EncryptResponse {
    #[prost(bytes = "vec", tag = "1")]
    cipher: Vec<u8>,
}

/// Answers `Encrypt` with the plaintext as the cipher, at once; every other path is `Unimplemented`.
#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "v1beta1.KeyManagementService";
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != ENCRYPT {
                return Ok(Status::unimplemented(request.uri().path().to_string()).into_http());
            }
            let codec = ProstCodec::<EncryptResponse, EncryptRequest>::default();
            Ok(tonic::server::Grpc::new(codec)
                .unary(EchoEncrypt, request)
                .await)
        })
    }
}

struct EchoEncrypt;

impl UnaryService<EncryptRequest> for EchoEncrypt {
    type Response = EncryptResponse;
    type Future = std::future::Ready<Result<Response<EncryptResponse>, Status>>;

    fn call(&mut self, request: Request<EncryptRequest>) -> Self::Future {
        std::future::ready(Ok(Response::new(EncryptResponse {
            cipher: request.into_inner().plain,
        })))
    }
}

async fn connect(socket: &Path) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("unix:{}", socket.display()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    tonic::client::Grpc::new(channel)
}

/// One `Encrypt` call of `plain` with a 3 s deadline less `skew` ms, so that `grpc-timeout` changes
/// from call to call as with grpc-go.
async fn encrypt(
    client: &mut tonic::client::Grpc<Channel>,
    plain: Vec<u8>,
    skew: u64,
) -> Result<(), Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(EncryptRequest {
        version: "v1beta1".into(),
        plain,
    });
    request.set_timeout(Duration::from_millis(3000 - skew % 1000));
    let codec = ProstCodec::<EncryptRequest, EncryptResponse>::default();
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(ENCRYPT),
            codec,
        )
        .await
        .map(drop)
}

// ---------------------------------------------------------------------------------------------------
// 1. The adapter's own CPU cost, on a recorded byte stream

/// A server-side connection that records every byte the client sent.
struct Tee {
    inner: UnixStream,
    log: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tee {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().get(start..).unwrap_or_default();
        this.log.lock().expect("log lock").extend_from_slice(read);
        result
    }
}

impl AsyncWrite for Tee {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for Tee {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

/// A client connection replayed from memory, 16 KiB per read.
struct Replay<'a> {
    data: &'a [u8],
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.data.len().min(buf.remaining()).min(16 * 1024);
        let (head, tail) = this.data.split_at(n);
        buf.put_slice(head);
        this.data = tail;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn read_to_end<R: AsyncRead + Unpin>(mut reader: R, buf: &mut [u8]) -> usize {
    let mut total = 0;
    loop {
        match reader.read(buf).await.expect("replay read") {
            0 => return total,
            n => total += n,
        }
    }
}

async fn adapter_cpu_per_call(dir: &Path, plan: &Plan) {
    let socket = dir.join("tee.sock");
    let log = Arc::new(Mutex::new(Vec::new()));
    let listener = UnixListener::bind(&socket).expect("bind tee socket");
    let tee_log = Arc::clone(&log);
    let incoming = UnixListenerStream::new(listener).map(move |conn| {
        conn.map(|inner| Tee {
            inner,
            log: Arc::clone(&tee_log),
        })
    });
    let server = tokio::spawn(
        Server::builder()
            .add_service(Echo)
            .serve_with_incoming(incoming),
    );
    let mut client = connect(&socket).await;
    for call in 0..plan.recorded_calls {
        encrypt(&mut client, vec![1; 1024], call)
            .await
            .expect("recorded call");
    }
    drop(client);
    server.abort();
    let stream = log.lock().expect("log lock").clone();

    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    for _ in 0..plan.replays {
        read_to_end(Replay { data: &stream }, &mut buf).await;
    }
    let without = started.elapsed();
    let started = Instant::now();
    for _ in 0..plan.replays {
        read_to_end(normalize(Replay { data: &stream }), &mut buf).await;
    }
    let with = started.elapsed();
    let per_call = |d: Duration| {
        d.as_secs_f64() * 1e6 / (f64::from(plan.replays) * plan.recorded_calls as f64)
    };
    println!(
        "adapter CPU: {} bytes for {} calls, read {:.2} µs/call plain, {:.2} µs/call through the adapter",
        stream.len(),
        plan.recorded_calls,
        per_call(without),
        per_call(with)
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. Tonic unary throughput with and without the adapter

async fn start_echo(socket: &Path, with_adapter: bool) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(socket).expect("bind echo socket");
    let incoming = UnixListenerStream::new(listener);
    let router = Server::builder().add_service(Echo);
    if with_adapter {
        let incoming = incoming.map(|conn| conn.map(normalize));
        tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        })
    } else {
        tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        })
    }
}

/// This process's user + system CPU time in clock ticks (fields 14 and 15 of `/proc/self/stat`).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the parenthesised command name start with field 3.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .unwrap_or_default();
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

/// Calls per second, and CPU ticks per call, of `concurrency` callers on one channel for `time`.
async fn measure(socket: &Path, concurrency: usize, time: Duration) -> (f64, f64) {
    let ticks = cpu_ticks();
    let client = connect(socket).await;
    let deadline = Instant::now() + time;
    let mut tasks = Vec::new();
    for caller in 0..concurrency {
        let mut client = client.clone();
        let fill = u8::try_from(caller % 256).unwrap_or_default();
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < deadline {
                encrypt(&mut client, vec![fill; 1024], calls)
                    .await
                    .expect("measured call");
                calls += 1;
            }
            calls
        }));
    }
    let mut total = 0u64;
    for task in tasks {
        total += task.await.expect("caller task");
    }
    let ticks = cpu_ticks().saturating_sub(ticks);
    let total = total.max(1) as f64;
    (total / time.as_secs_f64(), ticks as f64 / total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn unary_throughput(dir: &Path, plan: &Plan) {
    let plain = dir.join("plain.sock");
    let adapted = dir.join("adapted.sock");
    let servers = [
        start_echo(&plain, false).await,
        start_echo(&adapted, true).await,
    ];
    // Linux clock ticks are 10 ms; in µs per call.
    let tick_us = 1e6 / 100.0;
    for &concurrency in plan.concurrency {
        measure(&plain, concurrency, plan.warm_up).await;
        measure(&adapted, concurrency, plan.warm_up).await;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut with_cpu, mut without_cpu) = (Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            let (rate, cpu) = measure(&plain, concurrency, plan.round).await;
            without.push(rate);
            without_cpu.push(cpu * tick_us);
            let (rate, cpu) = measure(&adapted, concurrency, plan.round).await;
            with.push(rate);
            with_cpu.push(cpu * tick_us);
        }
        let (w, wo) = (median(with), median(without));
        let (wc, woc) = (median(with_cpu), median(without_cpu));
        println!(
            "concurrency {concurrency:>2}: without adapter {wo:>6.0} calls/s {woc:>5.1} µs CPU/call, \
             with adapter {w:>6.0} calls/s {wc:>5.1} µs CPU/call ({:+.1}% calls/s, {:+.1}% CPU/call; \
             medians of {} interleaved {:.1} s rounds)",
            (w / wo - 1.0) * 100.0,
            (wc / woc - 1.0) * 100.0,
            plan.rounds,
            plan.round.as_secs_f64(),
        );
    }
    for server in servers {
        server.abort();
    }
}
