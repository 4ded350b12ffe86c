//! The benchmark: `cargo bench --bench kms` (docs/benchmarks.md).
//!
//! Drives the real plugin binary and a "floor" server — the same tonic stack and socket handling, the
//! `:authority` adapter included, whose handlers return at once — with the same gRPC client, and reports
//! throughput, latency percentiles and the plugin ÷ floor ratio; then cold-start decrypts, start-to-ready
//! time, memory, and bulk SM4-GCM speed beside AES-256-GCM and `openssl speed`. Prints a table and writes
//! `target/bench/latest.json`.
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it runs a seconds-long smoke pass, so the
//! benchmark cannot rot.
// Test code: a panic is a failed test, and helpers shared across modules are `pub` by nature.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gm_kms_plugin::cipher::{Cipher, Sm4Gcm};
use gm_kms_plugin::proto::{v1beta1, v2};
use gm_kms_testkit::fake_jdcloud::FakeJdCloud;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

mod common;

use common::{Proc, channel, sm2_config, start_plugin};

/// How long each measured cell runs.
struct Plan {
    cell: Duration,
    concurrency: &'static [usize],
    cold_messages: usize,
    cold_keys: usize,
    bulk_budget: Duration,
    starts: usize,
}

const FULL: Plan = Plan {
    cell: Duration::from_millis(2500),
    concurrency: &[1, 16, 64],
    cold_messages: 10_000,
    cold_keys: 4,
    bulk_budget: Duration::from_millis(400),
    starts: 10,
};

const SMOKE: Plan = Plan {
    cell: Duration::from_millis(150),
    concurrency: &[1, 4],
    cold_messages: 200,
    cold_keys: 2,
    bulk_budget: Duration::from_millis(20),
    starts: 2,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--floor-server") {
        let socket = PathBuf::from(&args[i + 1]);
        let raw = args.iter().any(|a| a == "--no-adapter");
        floor_server(&socket, raw);
        return;
    }
    let full =
        args.iter().any(|a| a == "--bench") && std::env::var_os("GM_KMS_BENCH_SMOKE").is_none();
    let plan = if full { &FULL } else { &SMOKE };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(run(plan));
    let dir = common::report_dir();
    std::fs::create_dir_all(&dir).expect("the report directory");
    let name = if full { "latest.json" } else { "smoke.json" };
    std::fs::write(
        dir.join(name),
        serde_json::to_vec_pretty(&report).expect("json"),
    )
    .expect("write report");
    println!("\nwrote {}", dir.join(name).display());
}

fn start_floor(socket: &Path, raw: bool) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("--floor-server").arg(socket);
    if raw {
        cmd.arg("--no-adapter");
    }
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .expect("start floor server");
    Proc::wait_ready(child, socket).0
}

// ---------------------------------------------------------------------------------------------------
// The floor server: same stack, handlers that do nothing.

struct FloorV1;
struct FloorV2;

#[tonic::async_trait]
impl v1beta1::key_management_service_server::KeyManagementService for FloorV1 {
    async fn version(
        &self,
        _: Request<v1beta1::VersionRequest>,
    ) -> Result<Response<v1beta1::VersionResponse>, Status> {
        Ok(Response::new(v1beta1::VersionResponse {
            version: "v1beta1".into(),
            runtime_name: "floor".into(),
            runtime_version: "0".into(),
        }))
    }
    async fn encrypt(
        &self,
        r: Request<v1beta1::EncryptRequest>,
    ) -> Result<Response<v1beta1::EncryptResponse>, Status> {
        Ok(Response::new(v1beta1::EncryptResponse {
            cipher: r.into_inner().plain,
        }))
    }
    async fn decrypt(
        &self,
        r: Request<v1beta1::DecryptRequest>,
    ) -> Result<Response<v1beta1::DecryptResponse>, Status> {
        Ok(Response::new(v1beta1::DecryptResponse {
            plain: r.into_inner().cipher,
        }))
    }
}

#[tonic::async_trait]
impl v2::key_management_service_server::KeyManagementService for FloorV2 {
    async fn status(
        &self,
        _: Request<v2::StatusRequest>,
    ) -> Result<Response<v2::StatusResponse>, Status> {
        Ok(Response::new(v2::StatusResponse {
            version: "v2".into(),
            healthz: "ok".into(),
            key_id: "floor".into(),
        }))
    }
    async fn encrypt(
        &self,
        r: Request<v2::EncryptRequest>,
    ) -> Result<Response<v2::EncryptResponse>, Status> {
        Ok(Response::new(v2::EncryptResponse {
            ciphertext: r.into_inner().plaintext,
            key_id: "floor".into(),
            annotations: Default::default(),
        }))
    }
    async fn decrypt(
        &self,
        r: Request<v2::DecryptRequest>,
    ) -> Result<Response<v2::DecryptResponse>, Status> {
        Ok(Response::new(v2::DecryptResponse {
            plaintext: r.into_inner().ciphertext,
        }))
    }
}

fn floor_server(socket: &Path, raw: bool) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).expect("bind floor socket");
        let router = tonic::transport::Server::builder()
            .add_service(
                v1beta1::key_management_service_server::KeyManagementServiceServer::new(FloorV1),
            )
            .add_service(
                v2::key_management_service_server::KeyManagementServiceServer::new(FloorV2),
            );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        let stop = async move {
            term.recv().await;
        };
        if raw {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
                .await
        } else {
            let incoming =
                UnixListenerStream::new(listener).map(|c| c.map(gm_kms_authority::normalize));
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
        .expect("floor server");
    });
}

// ---------------------------------------------------------------------------------------------------
// The client side

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    V1Encrypt,
    V1Decrypt,
    V2Encrypt,
    V2Decrypt,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::V1Encrypt => "v1 Encrypt",
            Op::V1Decrypt => "v1 Decrypt",
            Op::V2Encrypt => "v2 Encrypt",
            Op::V2Decrypt => "v2 Decrypt",
        }
    }
}

const PAYLOAD: [u8; 32] = [0x42; 32];

/// One call; `ct` is a ciphertext of PAYLOAD for decrypts.
async fn call(ch: &Channel, op: Op, ct: &[u8]) {
    match op {
        Op::V1Encrypt => {
            let r =
                v1beta1::key_management_service_client::KeyManagementServiceClient::new(ch.clone())
                    .encrypt(v1beta1::EncryptRequest {
                        version: "v1beta1".into(),
                        plain: PAYLOAD.to_vec(),
                    })
                    .await
                    .expect("v1 encrypt");
            assert!(!r.into_inner().cipher.is_empty());
        }
        Op::V1Decrypt => {
            let r =
                v1beta1::key_management_service_client::KeyManagementServiceClient::new(ch.clone())
                    .decrypt(v1beta1::DecryptRequest {
                        version: "v1beta1".into(),
                        cipher: ct.to_vec(),
                    })
                    .await
                    .expect("v1 decrypt");
            assert_eq!(r.into_inner().plain.len(), 32);
        }
        Op::V2Encrypt => {
            let r = v2::key_management_service_client::KeyManagementServiceClient::new(ch.clone())
                .encrypt(v2::EncryptRequest {
                    plaintext: PAYLOAD.to_vec(),
                    uid: String::new(),
                })
                .await
                .expect("v2 encrypt");
            assert!(!r.into_inner().ciphertext.is_empty());
        }
        Op::V2Decrypt => {
            let r = v2::key_management_service_client::KeyManagementServiceClient::new(ch.clone())
                .decrypt(v2::DecryptRequest {
                    ciphertext: ct.to_vec(),
                    ..Default::default()
                })
                .await
                .expect("v2 decrypt");
            assert_eq!(r.into_inner().plaintext.len(), 32);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    ops_per_s: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
}

/// Runs `op` from `concurrency` tasks (one HTTP/2 connection each, as many apiserver-like clients) for
/// `dur`, after a short warm-up.
async fn measure(socket: &Path, op: Op, concurrency: usize, dur: Duration) -> Cell {
    let ch = channel(socket).await;
    let ct = match op {
        Op::V1Decrypt | Op::V2Decrypt => {
            let r = v2::key_management_service_client::KeyManagementServiceClient::new(ch.clone())
                .encrypt(v2::EncryptRequest {
                    plaintext: PAYLOAD.to_vec(),
                    uid: String::new(),
                })
                .await
                .expect("seed ciphertext");
            r.into_inner().ciphertext
        }
        _ => Vec::new(),
    };
    let ct = Arc::new(ct);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let ch = channel(socket).await;
        let (ct, stop) = (ct.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                call(&ch, op, &ct).await;
            }
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                call(&ch, op, &ct).await;
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    let elapsed = t.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Cell {
        ops_per_s: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
    }
}

// ---------------------------------------------------------------------------------------------------

async fn run(plan: &Plan) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut report = BTreeMap::<String, Value>::new();
    report.insert("machine".into(), json!(machine()));
    report.insert(
        "mode".into(),
        json!(if std::ptr::eq(plan, &FULL) {
            "full"
        } else {
            "smoke"
        }),
    );

    // Throughput and latency: plugin (sm2) vs floor, same client.
    let (config, socket) = sm2_config(dir.path(), "plugin", 1 << 20);
    let (plugin, _) = start_plugin(&config, &socket);
    std::thread::sleep(Duration::from_millis(100));
    let (rss_idle, _) = plugin.rss_kib();
    let floor_socket = dir.path().join("floor.sock");
    let floor = start_floor(&floor_socket, false);
    let raw_socket = dir.path().join("floor-raw.sock");
    let floor_raw = start_floor(&raw_socket, true);

    println!(
        "\n{:<12} {:>4} | {:>10} {:>8} {:>8} {:>8} | {:>10} {:>8} | {:>6}",
        "call", "conc", "plugin/s", "p50 µs", "p90 µs", "p99 µs", "floor/s", "f p99", "ratio"
    );
    let mut rows = Vec::new();
    for op in [Op::V1Encrypt, Op::V1Decrypt, Op::V2Encrypt, Op::V2Decrypt] {
        for &c in plan.concurrency {
            let p = measure(&socket, op, c, plan.cell).await;
            let f = measure(&floor_socket, op, c, plan.cell).await;
            let ratio = p.ops_per_s / f.ops_per_s;
            println!(
                "{:<12} {:>4} | {:>10.0} {:>8.0} {:>8.0} {:>8.0} | {:>10.0} {:>8.0} | {:>6.2}",
                op.name(),
                c,
                p.ops_per_s,
                p.p50_us,
                p.p90_us,
                p.p99_us,
                f.ops_per_s,
                f.p99_us,
                ratio
            );
            rows.push(json!({"call": op.name(), "concurrency": c,
                "plugin": {"ops_per_s": p.ops_per_s, "p50_us": p.p50_us, "p90_us": p.p90_us, "p99_us": p.p99_us},
                "floor": {"ops_per_s": f.ops_per_s, "p50_us": f.p50_us, "p90_us": f.p90_us, "p99_us": f.p99_us},
                "ratio": ratio}));
        }
    }
    report.insert("throughput".into(), json!(rows));
    let (_, rss_peak) = plugin.rss_kib();
    println!(
        "plugin RSS: idle {} KiB, peak under load {} KiB",
        rss_idle, rss_peak
    );
    report.insert(
        "rss_kib".into(),
        json!({"idle": rss_idle, "peak_under_load": rss_peak}),
    );

    // The :authority adapter's own cost: the floor with and without it, same client, same run.
    let c = *plan.concurrency.last().unwrap_or(&1);
    let with = measure(&floor_socket, Op::V2Encrypt, c.min(16), plan.cell).await;
    let without = measure(&raw_socket, Op::V2Encrypt, c.min(16), plan.cell).await;
    println!(
        "authority adapter: floor v2 Encrypt at {} conns: {:.0}/s with, {:.0}/s without ({:.1}% cost)",
        c.min(16),
        with.ops_per_s,
        without.ops_per_s,
        (1.0 - with.ops_per_s / without.ops_per_s) * 100.0
    );
    report.insert("authority_adapter".into(), json!({"concurrency": c.min(16), "with_ops_per_s": with.ops_per_s, "without_ops_per_s": without.ops_per_s}));
    drop(floor);
    drop(floor_raw);
    drop(plugin);

    // Start-to-ready: exec, config, key load, self-tests, bind.
    let mut starts = Vec::new();
    for _ in 0..plan.starts {
        let (p, ready) = start_plugin(&config, &socket);
        starts.push(ready.as_secs_f64() * 1000.0);
        drop(p);
    }
    starts.sort_by(f64::total_cmp);
    let median = starts[starts.len() / 2];
    println!(
        "start to socket ready: median {median:.1} ms over {} starts (min {:.1}, max {:.1})",
        starts.len(),
        starts[0],
        starts[starts.len() - 1]
    );
    report.insert(
        "start_to_ready_ms".into(),
        json!({"median": median, "all": starts}),
    );

    // Cold decrypt: sm2, and jdcloud against the local fake (which counts remote calls).
    report.insert("cold_decrypt_sm2".into(), cold_sm2(dir.path(), plan).await);
    report.insert(
        "cold_decrypt_jdcloud".into(),
        cold_jdcloud(dir.path(), plan).await,
    );

    report.insert("bulk".into(), bulk(plan));
    json!(report)
}

/// Seals `n` 32-byte messages through the socket with 8 connections; returns the ciphertexts.
async fn seal_many(socket: &Path, n: usize) -> Vec<Vec<u8>> {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let ch = channel(socket).await;
        let count = n / 8 + usize::from(t < n % 8);
        tasks.push(tokio::spawn(async move {
            let mut c = v2::key_management_service_client::KeyManagementServiceClient::new(ch);
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                out.push(
                    c.encrypt(v2::EncryptRequest {
                        plaintext: PAYLOAD.to_vec(),
                        uid: String::new(),
                    })
                    .await
                    .expect("encrypt")
                    .into_inner()
                    .ciphertext,
                );
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

/// Decrypts all with 16 connections; returns seconds taken.
async fn open_all(socket: &Path, cts: &[Vec<u8>]) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in cts.chunks(cts.len().div_ceil(16)) {
        let ch = channel(socket).await;
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut c = v2::key_management_service_client::KeyManagementServiceClient::new(ch);
            for ct in chunk {
                let p = c
                    .decrypt(v2::DecryptRequest {
                        ciphertext: ct,
                        ..Default::default()
                    })
                    .await
                    .expect("decrypt");
                assert_eq!(p.into_inner().plaintext, PAYLOAD);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    t.elapsed().as_secs_f64()
}

async fn cold_sm2(dir: &Path, plan: &Plan) -> Value {
    let per_key = (plan.cold_messages / plan.cold_keys) as u64;
    let (config, socket) = sm2_config(dir, "cold", per_key);
    let (p, _) = start_plugin(&config, &socket);
    let cts = seal_many(&socket, plan.cold_messages).await;
    drop(p);
    let keys = distinct_keys(&cts);
    let (_p, _) = start_plugin(&config, &socket);
    let secs = open_all(&socket, &cts).await;
    println!(
        "cold decrypt, sm2: {} ciphertexts under k={keys} data keys in {:.3} s after restart ({:.0}/s)",
        cts.len(),
        secs,
        cts.len() as f64 / secs
    );
    json!({"messages": cts.len(), "data_keys": keys, "seconds": secs})
}

async fn cold_jdcloud(dir: &Path, plan: &Plan) -> Value {
    let fake = FakeJdCloud::start().await;
    let socket = dir.join("jd.sock");
    let mut config: Value =
        serde_json::from_str(&fake.seed_config_json(socket.to_str().expect("utf-8")))
            .expect("json");
    config["HealthAddr"] = json!("");
    let path = dir.join("jd.json");
    common::write_private(&path, config.to_string());
    // jdcloud-mode throughput at 16 connections with the default data-key policy, and its remote calls.
    let (p, _) = start_plugin(&path, &socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.reset_counts();
    let jd = measure(&socket, Op::V2Encrypt, 16, plan.cell).await;
    let enc_calls = fake.counts();
    let encrypts = jd.ops_per_s * plan.cell.as_secs_f64();
    println!(
        "jdcloud v2 Encrypt at 16 conns: {:.0}/s, p99 {:.0} µs; ~{encrypts:.0} Encrypts made {} remote calls",
        jd.ops_per_s,
        jd.p99_us,
        enc_calls.total()
    );
    drop(p);
    // Cold decrypt: k data keys.
    config["DataKeyMaxUses"] = json!(plan.cold_messages / plan.cold_keys);
    std::fs::write(&path, config.to_string()).expect("config");
    let (p, _) = start_plugin(&path, &socket);
    let cts = seal_many(&socket, plan.cold_messages).await;
    drop(p);
    let keys = distinct_keys(&cts);
    let (_p, _) = start_plugin(&path, &socket);
    // Let the start-up health round trip finish before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.reset_counts();
    let secs = open_all(&socket, &cts).await;
    let calls = fake.counts();
    println!(
        "cold decrypt, jdcloud (local fake): {} ciphertexts under k={keys} data keys: {} remote Decrypt calls, {:.3} s",
        cts.len(),
        calls.decrypt,
        secs
    );
    json!({"messages": cts.len(), "data_keys": keys, "remote_decrypt_calls": calls.decrypt, "seconds": secs,
           "encrypt_ops_per_s_16": jd.ops_per_s, "encrypt_p99_us_16": jd.p99_us,
           "encrypts_in_cell": encrypts, "remote_calls_during_encrypt_cell": enc_calls.total()})
}

fn distinct_keys(cts: &[Vec<u8>]) -> usize {
    cts.iter()
        .map(|c| {
            gm_kms_plugin::ciphertext::parse(c)
                .expect("format 1")
                .wrapped_dk
                .to_vec()
        })
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Bulk seal+open speed of SM4-GCM and AES-256-GCM in MB/s, and `openssl speed -evp sm4-ctr` if present.
fn bulk(plan: &Plan) -> Value {
    use aes_gcm::aead::array::Array;
    use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
    let sm4 = Sm4Gcm::from_key_bytes([7; 16]);
    let aes = Aes256Gcm::new(&Array::from([7u8; 32]));
    let nonce = [1u8; 12];
    let mut rows = Vec::new();
    println!(
        "\n{:>8} | {:>14} {:>14} | {:>14}",
        "size", "SM4-GCM seal", "SM4-GCM open", "AES-256-GCM seal"
    );
    for size in [32usize, 1024, 64 * 1024, 1024 * 1024] {
        let data = vec![0x5Au8; size];
        let rate = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < plan.bulk_budget || n < 3 {
                f();
                n += 1;
            }
            (n as f64 * size as f64) / t.elapsed().as_secs_f64() / 1e6
        };
        let mut sealed = Vec::new();
        sm4.seal_append(&nonce, b"", &data, &mut sealed)
            .expect("seal");
        let seal = rate(&mut || {
            let mut out = Vec::with_capacity(size + 16);
            sm4.seal_append(&nonce, b"", &data, &mut out).expect("seal");
            std::hint::black_box(out);
        });
        let open = rate(&mut || {
            std::hint::black_box(sm4.open(&nonce, b"", &sealed).expect("open"));
        });
        let aes_seal = rate(&mut || {
            let mut buf = data.clone();
            let tag = aes
                .encrypt_inout_detached(&Array::from(nonce), b"", buf.as_mut_slice().into())
                .expect("aes");
            std::hint::black_box((buf, tag));
        });
        println!(
            "{:>8} | {:>9.1} MB/s {:>9.1} MB/s | {:>9.1} MB/s",
            size, seal, open, aes_seal
        );
        rows.push(json!({"size": size, "sm4_gcm_seal_mb_s": seal, "sm4_gcm_open_mb_s": open, "aes256_gcm_seal_mb_s": aes_seal}));
    }
    let openssl = openssl_sm4_ctr();
    if let Some(o) = &openssl {
        println!("openssl speed -evp sm4-ctr (MB/s by block size): {o}");
    }
    json!({"rows": rows, "openssl_sm4_ctr_mb_s": openssl})
}

fn openssl_sm4_ctr() -> Option<Value> {
    let out = Command::new("openssl")
        .args([
            "speed", "-seconds", "1", "-bytes", "1024", "-evp", "sm4-ctr",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Last line: "SM4-CTR   12345.67k"; OpenSSL reports 1000s of bytes per second.
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_lowercase().starts_with("sm4"))?;
    let kbs: f64 = line
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse()
        .ok()?;
    Some(json!({"1024": kbs / 1000.0}))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
}
