//! Round-trip load on a plugin while something happens to it (a rotation by SIGHUP): every call must
//! succeed and every answer must be the bytes sent.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gm_kms_plugin::proto::v2;
use tokio::task::JoinHandle;

use super::plugin::{self, V2, v2_decrypt, v2_encrypt};

/// What one load task saw: failed calls, and the key ids Encrypt answered with.
type Seen = (Vec<String>, HashSet<String>);

/// `tasks` clients, each sealing and opening distinct messages until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Seen>>,
}

impl Load {
    /// Starts the load on the plugin at `socket`.
    pub async fn start(socket: &Path, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for t in 0..tasks {
            let mut c = plugin::v2(socket).await;
            let (stop, ops) = (stop.clone(), ops.clone());
            handles.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut ids = HashSet::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let plain = format!("task {t} message {i}").into_bytes();
                    i += 1;
                    match v2_encrypt(&mut c, &plain).await {
                        Ok(r) => {
                            ids.insert(r.key_id.clone());
                            match v2_decrypt(&mut c, &r.ciphertext).await {
                                Ok(back) if back == plain => {}
                                Ok(_) => failures.push("decrypt returned other bytes".to_string()),
                                Err(e) => failures.push(format!("decrypt: {e}")),
                            }
                        }
                        Err(e) => failures.push(format!("encrypt: {e}")),
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                (failures, ids)
            }));
        }
        Self {
            stop,
            ops,
            tasks: handles,
        }
    }

    /// Round trips so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Waits until `n` round trips are done (at most a minute).
    pub async fn wait_ops(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ops() < n {
            assert!(
                Instant::now() < deadline,
                "load stalled at {} ops",
                self.ops()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the load and asserts that no call failed (`context` is shown if one did); returns every key
    /// id Encrypt answered with.
    pub async fn finish(self, context: impl Fn() -> String) -> HashSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all_ids = HashSet::new();
        for t in self.tasks {
            let (failures, ids) = t.await.expect("load task");
            assert!(
                failures.is_empty(),
                "{} failed calls, first: {:?}\n{}",
                failures.len(),
                failures.first(),
                context()
            );
            all_ids.extend(ids);
        }
        all_ids
    }
}

/// Polls v2 `Status` until its key id is no longer `old` (at most 30 s); returns the new id.
pub async fn wait_for_new_key_id(c: &mut V2, old: &str, context: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let id = c
            .status(v2::StatusRequest {})
            .await
            .expect("Status")
            .into_inner()
            .key_id;
        if id != old {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "Status key_id never changed:\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
