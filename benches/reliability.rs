//! Reliability runs (docs/reliability.md), each bounded and local:
//!
//! - `cargo bench --bench reliability -- soak [ROUND_TRIPS]`: v2 Encrypt+Decrypt round trips at concurrency
//!   64 against the sm2 provider (default 1,000,000); errors, wrong answers, RSS and open file descriptors
//!   after the first 10% and at the end.
//! - `cargo bench --bench reliability -- faults`: the jdcloud provider against the local fake JD Cloud
//!   while a load generator runs; each fault is switched on for a few seconds, then off; per fault: calls
//!   made and failed, wrong or empty answers (must be 0), and the time to recover.
//!
//! Run without `--bench` (as `cargo test --all-targets` does) both run in a seconds-long smoke size.
// Test code: a panic is a failed test, and helpers shared across modules are `pub` by nature.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{channel, fd_count, sm2_config, start_plugin};
use gm_kms_plugin::proto::v2;
use gm_kms_testkit::fake_jdcloud::{FakeJdCloud, Fault};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

type Client = v2::key_management_service_client::KeyManagementServiceClient<Channel>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let wanted = |name: &str| !full || args.iter().any(|a| a == name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = serde_json::Map::new();
    if wanted("soak") {
        let n = args
            .iter()
            .skip_while(|a| *a != "soak")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(if full { 1_000_000 } else { 2_000 });
        report.insert("soak".into(), rt.block_on(soak(n)));
    }
    if wanted("faults") {
        let phase = if full {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(300)
        };
        report.insert("faults".into(), rt.block_on(faults(phase)));
    }
    let dir = common::report_dir();
    std::fs::create_dir_all(&dir).expect("the report directory");
    let name = if full {
        "reliability.json"
    } else {
        "reliability-smoke.json"
    };
    std::fs::write(
        dir.join(name),
        serde_json::to_vec_pretty(&report).expect("json"),
    )
    .expect("write");
    println!("wrote {}", dir.join(name).display());
    let failed = report.values().any(|v| v["ok"] == false);
    assert!(!failed, "a reliability run failed its bar; see above");
}

async fn encrypt(c: &mut Client, msg: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.encrypt(v2::EncryptRequest {
        plaintext: msg.to_vec(),
        uid: String::new(),
    })
    .await
    .map(|r| r.into_inner().ciphertext)
}

async fn decrypt(c: &mut Client, ct: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let mut req = tonic::Request::new(v2::DecryptRequest {
        ciphertext: ct.to_vec(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(3));
    c.decrypt(req).await.map(|r| r.into_inner().plaintext)
}

async fn soak(round_trips: u64) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, socket) = sm2_config(dir.path(), "soak", 1 << 20);
    let (plugin, _) = start_plugin(&config, &socket);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let checkpoint = round_trips / 10;
    let mut tasks = Vec::new();
    let t = Instant::now();
    for w in 0..64u64 {
        let mut c = Client::new(channel(&socket).await);
        let (done, errors, wrong) = (done.clone(), errors.clone(), wrong.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while done.fetch_add(1, Ordering::Relaxed) < round_trips {
                let mut msg = [0u8; 32];
                msg[..8].copy_from_slice(&w.to_be_bytes());
                msg[8..16].copy_from_slice(&i.to_be_bytes());
                i += 1;
                match encrypt(&mut c, &msg).await {
                    Ok(ct) => match decrypt(&mut c, &ct).await {
                        Ok(pt) if pt == msg => {}
                        Ok(_) => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Sample memory and descriptors once the first 10% are done.
    let mut early = None;
    while tasks.iter().any(|t| !t.is_finished()) {
        if early.is_none() && done.load(Ordering::Relaxed) >= checkpoint {
            early = Some((plugin.rss_kib().0, fd_count(plugin.pid())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in tasks {
        task.await.expect("soak task");
    }
    let secs = t.elapsed().as_secs_f64();
    let (rss_end, peak) = plugin.rss_kib();
    let fds_end = fd_count(plugin.pid());
    let (rss_early, fds_early) = early.unwrap_or((rss_end, fds_end));
    let growth = (rss_end as f64 / rss_early.max(1) as f64 - 1.0) * 100.0;
    let (errors, wrong) = (
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    let ok = errors == 0 && wrong == 0 && growth < 10.0 && fds_end <= fds_early;
    println!(
        "soak: {round_trips} v2 Encrypt+Decrypt round trips at concurrency 64 in {secs:.1} s \
         ({:.0} round trips/s); errors {errors}, wrong answers {wrong}; RSS after 10% {rss_early} KiB, \
         at end {rss_end} KiB ({growth:+.1}%), peak {peak} KiB; open fds {fds_early} -> {fds_end}: {}",
        round_trips as f64 / secs,
        if ok { "PASS" } else { "FAIL" }
    );
    json!({"round_trips": round_trips, "concurrency": 64, "seconds": secs, "errors": errors, "wrong": wrong,
           "rss_kib_after_10pct": rss_early, "rss_kib_end": rss_end, "rss_kib_peak": peak, "rss_growth_pct": growth,
           "fds_after_10pct": fds_early, "fds_end": fds_end, "ok": ok})
}

/// A load that needs the remote KMS: every Decrypt is of a ciphertext whose data key is not cached
/// (cache of 1 key, many data keys), and sealing rotates the data key every few messages.
struct Load {
    calls: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    stop: AtomicBool,
}

async fn faults(phase: Duration) -> Value {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("jd.sock");
    let mut config: Value =
        serde_json::from_str(&fake.seed_config_json(socket.to_str().expect("utf-8")))
            .expect("json");
    config["HealthAddr"] = json!("");
    config["KmsTimeoutMs"] = json!(500);
    config["DataKeyMaxUses"] = json!(20);
    config["DataKeyCacheSize"] = json!(1);
    let path = dir.path().join("jd.json");
    common::write_private(&path, config.to_string());
    let (_plugin, _) = start_plugin(&path, &socket);

    // A pool of ciphertexts under many data keys, made while everything is healthy.
    let mut c = Client::new(channel(&socket).await);
    let mut pool = Vec::new();
    for i in 0..400u32 {
        let msg = format!("pool message {i}").into_bytes();
        let ct = encrypt(&mut c, &msg).await.expect("healthy encrypt");
        pool.push((msg, ct));
    }
    let pool = Arc::new(pool);
    let cases: [(&str, Option<Fault>); 9] = [
        ("HTTP 500", Some(Fault::Status500)),
        ("HTTP 429", Some(Fault::Status429)),
        ("timeout (answer after 800 ms > KmsTimeoutMs)", None),
        ("slow past the 3 s deadline", None),
        ("connection reset", Some(Fault::DropConnection)),
        ("garbage JSON", Some(Fault::GarbageJson)),
        ("empty result", Some(Fault::EmptyResult)),
        ("key disabled mid-run", None),
        ("KMS down (connection refused)", None),
    ];
    let mut rows = Vec::new();
    let mut all_ok = true;
    println!(
        "\n{:<46} | {:>7} {:>7} {:>6} | {:>10}",
        "fault", "calls", "failed", "wrong", "recover ms"
    );
    for (name, fault) in cases {
        let load = Arc::new(Load {
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let sealed_during = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..8usize {
            let mut c = Client::new(channel(&socket).await);
            let (load, pool, sealed_during) = (load.clone(), pool.clone(), sealed_during.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while !load.stop.load(Ordering::Relaxed) {
                    let (msg, ct) = &pool[i % pool.len()];
                    i += 7;
                    load.calls.fetch_add(2, Ordering::Relaxed);
                    match decrypt(&mut c, ct).await {
                        Ok(pt) if &pt == msg => {}
                        Ok(_) => {
                            load.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let fresh = format!("sealed during {w}/{i}").into_bytes();
                    match encrypt(&mut c, &fresh).await {
                        Ok(ct) if !ct.is_empty() => sealed_during.lock().await.push((fresh, ct)),
                        Ok(_) => {
                            load.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(phase / 3).await;
        match (name, fault) {
            (_, Some(f)) => fake.set_fault(f),
            (n, None) if n.starts_with("timeout") => fake.set_delay(Duration::from_millis(800)),
            (n, None) if n.starts_with("slow") => fake.set_delay(Duration::from_secs(4)),
            (n, None) if n.starts_with("key disabled") => fake.set_keys_enabled(false),
            _ => fake.set_down(true).await,
        }
        tokio::time::sleep(phase).await;
        fake.clear_fault();
        fake.set_delay(Duration::ZERO);
        fake.set_keys_enabled(true);
        fake.set_down(false).await;
        // Recovery: the first uncached Decrypt that succeeds after the fault is gone.
        let cleared = Instant::now();
        let mut probe = Client::new(channel(&socket).await);
        let mut recovered = None;
        for (j, (msg, ct)) in pool.iter().enumerate().cycle().skip(3) {
            if cleared.elapsed() > Duration::from_secs(30) {
                break;
            }
            match decrypt(&mut probe, ct).await {
                Ok(pt) if &pt == msg => {
                    recovered = Some(cleared.elapsed());
                    break;
                }
                Ok(_) => {
                    load.wrong.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.code() == Code::InvalidArgument => {
                    panic!("{name}: valid ciphertext {j} refused: {e:?}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        load.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("load task");
        }
        // Everything sealed during the fault must open to what was sealed, now that it is gone.
        for (msg, ct) in sealed_during.lock().await.iter() {
            match decrypt(&mut probe, ct).await {
                Ok(pt) if &pt == msg => {}
                _ => {
                    load.wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let (calls, failed, wrong) = (
            load.calls.load(Ordering::Relaxed),
            load.failed.load(Ordering::Relaxed),
            load.wrong.load(Ordering::Relaxed),
        );
        let ok = wrong == 0 && recovered.is_some();
        all_ok &= ok;
        let rec_ms = recovered.map(|d| d.as_secs_f64() * 1000.0);
        println!(
            "{name:<46} | {calls:>7} {failed:>7} {wrong:>6} | {:>10}",
            rec_ms.map_or("never".to_string(), |m| format!("{m:.0}"))
        );
        rows.push(json!({"fault": name, "calls": calls, "failed": failed, "wrong_or_empty": wrong, "recover_ms": rec_ms, "ok": ok}));
    }
    json!({"phase_ms": phase.as_millis() as u64, "rows": rows, "ok": all_ok})
}
