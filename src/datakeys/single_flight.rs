//! At most one provider call per key at a time: callers that miss the cache while a call for the same key
//! is under way wait for its result instead of making their own. Nothing is remembered once a call is
//! over: errors are not cached here, and a call abandoned by every caller (a gRPC deadline) leaves no
//! entry behind.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::lock;

/// One call's result, shared by every caller waiting on it.
type Shared<V, E> = Arc<OnceCell<Result<V, E>>>;

/// The calls in flight, by key.
pub(super) struct SingleFlight<K, V, E> {
    calls: Mutex<HashMap<K, Shared<V, E>>>,
}

impl<K, V, E> Default for SingleFlight<K, V, E> {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> SingleFlight<K, V, E> {
    /// Runs `call` for `key`, or joins the one already running, then hands the result to `admit`. `admit`
    /// runs while this caller still holds its place in the table, so a result cached by `admit` is in the
    /// cache before the entry can leave the table: no caller in between makes a second call.
    pub(super) async fn run<T, F, Fut>(
        &self,
        key: K,
        call: F,
        admit: impl FnOnce(V) -> Result<T, E>,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = lock(&self.calls).entry(key.clone()).or_default().clone();
        // The guard owns this caller's only reference to the cell: the count it checks on drop must see
        // exactly the table's and its own when nobody else waits (a second local clone here once kept
        // every cancelled single call in the table forever).
        let place = Place {
            calls: &self.calls,
            key,
            cell,
        };
        let value = place.cell.get_or_init(call).await.clone()?;
        admit(value)
    }

    /// Calls in the table now.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        lock(&self.calls).len()
    }
}

/// A caller's place in the table; removes a finished (or abandoned) entry when the last caller leaves.
struct Place<'a, K: Hash + Eq, V, E> {
    calls: &'a Mutex<HashMap<K, Shared<V, E>>>,
    key: K,
    cell: Shared<V, E>,
}

impl<K: Hash + Eq, V, E> Drop for Place<'_, K, V, E> {
    fn drop(&mut self) {
        let mut calls = lock(self.calls);
        if let Some(entry) = calls.get(&self.key) {
            // 2 = the table's reference and ours: nobody else is waiting on an unfinished call.
            if Arc::ptr_eq(entry, &self.cell)
                && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2)
            {
                calls.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    type Flight = SingleFlight<&'static str, u32, String>;

    #[tokio::test]
    async fn concurrent_callers_share_one_call() {
        let flight = Arc::new(Flight::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (flight, calls) = (flight.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(
                        "k",
                        || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(7)
                        },
                        Ok,
                    )
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn errors_are_shared_but_not_remembered() {
        let flight = Flight::default();
        let r = flight
            .run("k", || async { Err("down".to_string()) }, Ok)
            .await;
        assert_eq!(r, Err("down".to_string()));
        assert_eq!(flight.in_flight(), 0);
        let r = flight.run("k", || async { Ok(1) }, Ok).await;
        assert_eq!(r, Ok(1));
    }

    /// The attack of issue 13 (item 6): one caller whose deadline cuts its call off. Before the fix the
    /// entry stayed in the table for good, one per abandoned call.
    #[tokio::test]
    async fn a_cancelled_single_caller_leaves_no_entry() {
        let flight = Flight::default();
        for key in ["a", "b", "c"] {
            let slow = flight.run(
                key,
                || async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(1)
                },
                Ok,
            );
            assert!(
                tokio::time::timeout(Duration::from_millis(10), slow)
                    .await
                    .is_err()
            );
        }
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_caller_does_not_strand_the_others() {
        let flight = Arc::new(Flight::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let call = |calls: Arc<AtomicUsize>| {
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(5)
            }
        };
        let patient = {
            let (flight, calls) = (flight.clone(), calls.clone());
            tokio::spawn(async move { flight.run("k", call(calls), Ok).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let impatient = flight.run("k", call(calls.clone()), Ok);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), impatient)
                .await
                .is_err()
        );
        // The patient caller still owns the call, so it is still in the table and still shared.
        assert_eq!(flight.in_flight(), 1);
        assert_eq!(patient.await.unwrap(), Ok(5));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0);
    }
}
