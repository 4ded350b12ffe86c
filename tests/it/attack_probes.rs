//! Issue 13 item 3, as an attacker on the node would try it: hold the health listener's connections open
//! so that kubelet's liveness probe (`GET /livez`, 3 s timeout) fails and the plugin is restarted in a loop.
//! The attacker needs no privilege, only a TCP connection to `HealthAddr`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::plugin::{Plugin, sm2_setup};

/// The address the plugin's health listener bound (`HealthAddr` port 0), from its log line
/// `health listener serving http://ADDR/livez …` (src/http.rs).
fn health_addr(p: &Plugin) -> SocketAddr {
    const MARK: &str = "health listener serving http://";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = p.logs().lines().find_map(|l| {
            let rest = l.get(l.find(MARK)? + MARK.len()..)?;
            rest.split('/').next()?.parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(Instant::now() < deadline, "no {MARK:?} line:\n{}", p.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One probe as kubelet makes it: a fresh connection, `GET /livez`, 3 s to answer 200.
fn probe(addr: SocketAddr) -> Result<Duration, String> {
    let t = Instant::now();
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.30\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read after {:?}: {e}", t.elapsed()))?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(t.elapsed())
    } else {
        Err(format!(
            "answer after {:?}: {:?}",
            t.elapsed(),
            String::from_utf8_lossy(&answer)
        ))
    }
}

/// `holders` threads, each keeping one silent connection open and opening a new one as soon as the
/// plugin closes it; stops when `stop` is set. Counts the connections opened.
fn flood(
    addr: SocketAddr,
    holders: usize,
    stop: &Arc<AtomicBool>,
    opened: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..holders)
        .map(|_| {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    // Never send a byte; wake up now and then to see whether to stop.
                    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                    let mut buf = [0u8; 256];
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                    // Closed by the plugin: reopen after a breath (1 ms), as the attack in issue 13 did.
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect()
}

/// Before the fix: 64 connection slots, refusal when full, a 10 s header timeout: 15 of 15 probes failed
/// while 64+ idle connections were held (reopened as closed). After it: the oldest idle connection is
/// evicted for the new one, idle ones go after 1 s, and the probes are answered.
#[test]
fn livez_is_answered_while_idle_connections_flood_the_health_port() {
    const HOLDERS: usize = 96;
    const PROBES: usize = 15;
    let s = sm2_setup(json!({"HealthAddr": "127.0.0.1:0"}));
    let p = Plugin::start(&s.config, &s.socket);
    let addr = health_addr(&p);
    probe(addr).expect("/livez answers before the attack");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let threads = flood(addr, HOLDERS, &stop, &opened);
    // Let the flood fill the table.
    std::thread::sleep(Duration::from_secs(2));

    let mut ok = 0;
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for _ in 0..PROBES {
        match probe(addr) {
            Ok(t) => {
                ok += 1;
                slowest = slowest.max(t);
            }
            Err(e) => failures.push(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let opened = opened.load(Ordering::Relaxed);
    eprintln!(
        "livez under {HOLDERS} idle connections (reopened as closed; {opened} opened): {ok}/{PROBES} \
         probes answered, slowest {slowest:?}; failures: {failures:?}"
    );
    assert!(
        ok >= PROBES - 1,
        "{ok}/{PROBES} probes answered: {failures:?}\n{}",
        p.logs()
    );
    assert!(opened > HOLDERS as u64, "the flood reopened connections");
    assert!(
        p.logs().contains("connection table full"),
        "the eviction is logged:\n{}",
        p.logs()
    );
    // The KMS socket was never the target, and the health port serves again once the flood ends.
    probe(addr).expect("/livez after the attack");
}

/// A `HealthAddr` that other hosts can reach is a warning at start (the listener answers anyone).
#[test]
fn a_health_addr_off_loopback_is_warned_about_at_start() {
    let s = sm2_setup(json!({"HealthAddr": "0.0.0.0:0"}));
    let p = Plugin::start(&s.config, &s.socket);
    // Logged before the listener's "serving" line.
    health_addr(&p);
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("not a loopback address"))
        .unwrap_or_else(|| panic!("no warning:\n{logs}"));
    assert!(line.contains("WARN") && line.contains("0.0.0.0"), "{line}");
    let s2 = sm2_setup(json!({"HealthAddr": "127.0.0.1:0"}));
    let p2 = Plugin::start(&s2.config, &s2.socket);
    health_addr(&p2);
    assert!(
        !p2.logs().contains("not a loopback address"),
        "{}",
        p2.logs()
    );
}
