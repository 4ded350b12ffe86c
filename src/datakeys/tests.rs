use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::cache::cache_key;
use super::test_provider::Counting;
use super::*;
use crate::cipher;
use crate::error::Error;

fn setup(policy: DataKeyPolicy) -> (Arc<Counting>, DataKeys) {
    let p = Counting::new("k1");
    let ring = Keyring::new(vec![p.clone() as Arc<dyn KeyProvider>]).unwrap();
    (p, DataKeys::new(Arc::new(ring), policy))
}

async fn seal(dks: &DataKeys, msg: &[u8]) -> (Arc<CurrentKey>, Vec<u8>) {
    let k = dks.current().await.unwrap();
    let mut out = Vec::new();
    k.cipher()
        .seal_append(&[0; 12], b"", msg, &mut out)
        .unwrap();
    (k, out)
}

#[tokio::test]
async fn data_key_is_reused_until_max_uses() {
    let (p, dks) = setup(DataKeyPolicy {
        max_uses: 3,
        ..Default::default()
    });
    let mut ids = Vec::new();
    for _ in 0..7 {
        let k = dks.current().await.unwrap();
        ids.push(k.wrapped().to_vec());
    }
    assert_eq!(p.wraps.load(Ordering::SeqCst), 3, "7 uses at 3 per key");
    assert_eq!(ids[0], ids[2]);
    assert_ne!(ids[2], ids[3]);
    assert_eq!(dks.stats.rotations.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn data_key_retires_with_age() {
    let (p, dks) = setup(DataKeyPolicy {
        max_age: Duration::from_millis(30),
        ..Default::default()
    });
    dks.current().await.unwrap();
    dks.current().await.unwrap();
    assert_eq!(p.wraps.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    dks.current().await.unwrap();
    assert_eq!(p.wraps.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn outage_keeps_sealing_on_the_old_key_and_backs_off() {
    let (p, dks) = setup(DataKeyPolicy {
        max_uses: 2,
        ..Default::default()
    });
    let first = dks.current().await.unwrap();
    p.down.store(true, Ordering::SeqCst);
    for _ in 0..50 {
        let k = dks.current().await.unwrap();
        assert!(Arc::ptr_eq(&k, &first));
    }
    assert!(dks.degraded());
    // One failed attempt, then the back-off holds further ones off.
    assert_eq!(p.wraps.load(Ordering::SeqCst), 2);
    assert_eq!(first.uses(), 51);
}

/// Seals `per_caller` messages from each of `callers` concurrent tasks; how many each data key (by its
/// wrapped bytes) sealed.
async fn seal_concurrently(
    dks: &Arc<DataKeys>,
    callers: usize,
    per_caller: usize,
) -> std::collections::HashMap<Vec<u8>, u64> {
    let start = Arc::new(tokio::sync::Barrier::new(callers));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (d, start) = (dks.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut uses = std::collections::HashMap::<Vec<u8>, u64>::new();
            for _ in 0..per_caller {
                let k = d.current().await.unwrap();
                *uses.entry(k.wrapped().to_vec()).or_default() += 1;
                tokio::task::yield_now().await;
            }
            uses
        }));
    }
    let mut all = std::collections::HashMap::new();
    for t in tasks {
        for (k, n) in t.await.unwrap() {
            *all.entry(k).or_default() += n;
        }
    }
    all
}

/// Issue 13 item 7: while one caller wraps a new data key the others used to keep sealing with the old
/// one past `DataKeyMaxUses` (cap 1,000, 32 threads: 1,027 uses). The cap is exact now: 64 callers, a
/// 20 ms wrap, 16,000 messages make exactly 16 keys of 1,000 uses each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_uses_is_exact_while_a_slow_rotation_runs() {
    const CAP: u64 = 1_000;
    const CALLERS: usize = 64;
    const PER_CALLER: usize = 250;
    let (p, dks) = setup(DataKeyPolicy {
        max_uses: CAP,
        ..Default::default()
    });
    p.wrap_delay_ms.store(20, Ordering::SeqCst);
    let dks = Arc::new(dks);
    let uses = seal_concurrently(&dks, CALLERS, PER_CALLER).await;
    let total: u64 = uses.values().sum();
    let most = uses.values().copied().max().unwrap();
    eprintln!(
        "{CALLERS} callers, {total} messages, DataKeyMaxUses {CAP}: {} data keys, most uses of one {most}",
        uses.len()
    );
    assert_eq!(total, (CALLERS * PER_CALLER) as u64);
    assert!(
        most <= CAP,
        "a data key sealed {most} messages with DataKeyMaxUses {CAP}"
    );
    assert_eq!(uses.len() as u64, total.div_ceil(CAP), "{:?}", {
        let mut v: Vec<u64> = uses.values().copied().collect();
        v.sort_unstable();
        v
    });
    assert_eq!(p.wraps.load(Ordering::SeqCst), uses.len());
    assert!(!dks.degraded());
}

/// The wait above is not for an outage: while wrapping fails, DESIGN §3's fallback keeps every caller
/// sealing on the old key past its cap (up to the hard limit), degraded, and nobody gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_fall_back_past_the_cap_while_wrapping_fails() {
    let (p, dks) = setup(DataKeyPolicy {
        max_uses: 100,
        ..Default::default()
    });
    let dks = Arc::new(dks);
    let first = dks.current().await.unwrap();
    p.down.store(true, Ordering::SeqCst);
    p.wrap_delay_ms.store(20, Ordering::SeqCst);
    let uses = seal_concurrently(&dks, 64, 50).await;
    assert_eq!(uses.len(), 1);
    assert_eq!(uses.get(first.wrapped()), Some(&3200));
    assert_eq!(first.uses(), 3201);
    assert!(dks.degraded());
    // One failed attempt; the back-off holds off the others.
    assert_eq!(p.wraps.load(Ordering::SeqCst), 2);
}

/// A key retired by age (not by its use cap) keeps sealing while its replacement is wrapped: callers do
/// not wait for a slow remote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_age_serves_while_the_rotation_runs() {
    let (p, dks) = setup(DataKeyPolicy {
        max_age: Duration::from_millis(20),
        ..Default::default()
    });
    let dks = Arc::new(dks);
    let first = dks.current().await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    p.wrap_delay_ms.store(1_000, Ordering::SeqCst);
    let rotating = {
        let d = dks.clone();
        tokio::spawn(async move { d.current().await.unwrap() })
    };
    while p.wraps.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    let t = std::time::Instant::now();
    for _ in 0..100 {
        let k = dks.current().await.unwrap();
        assert!(Arc::ptr_eq(&k, &first));
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let second = rotating.await.unwrap();
    assert!(!Arc::ptr_eq(&second, &first));
    assert_eq!(first.uses(), 101);
}

#[tokio::test]
async fn outage_with_no_key_yet_is_unavailable() {
    let (p, dks) = setup(DataKeyPolicy::default());
    p.down.store(true, Ordering::SeqCst);
    let e = dks.current().await.err().unwrap();
    assert!(
        matches!(e, Error::Provider(ProviderError::Unavailable(_))),
        "{e:?}"
    );
}

#[tokio::test]
async fn concurrent_misses_make_one_unwrap_call() {
    let (p, dks) = setup(DataKeyPolicy::default());
    let dks = Arc::new(dks);
    let (k, sealed) = seal(&dks, b"payload").await;
    p.delay_ms.store(50, Ordering::SeqCst);
    let wrapped = k.wrapped().to_vec();
    // A fresh cache, as after a restart.
    let dks2 = {
        let ring = dks.state().keyring.clone();
        Arc::new(DataKeys::new(ring, DataKeyPolicy::default()))
    };
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (d, w, s) = (dks2.clone(), wrapped.clone(), sealed.clone());
        tasks.push(tokio::spawn(async move {
            d.open_with(cipher::SM4_GCM, "k1", &w, |c| c.open(&[0; 12], b"", &s))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), b"payload");
    }
    assert_eq!(p.unwraps.load(Ordering::SeqCst), 1);
    assert_eq!(dks2.stats.unwraps.load(Ordering::SeqCst), 1);
    assert_eq!(dks2.cache_len(), 1);
    assert!(dks2.unwrapping.in_flight() == 0);
}

#[tokio::test]
async fn a_wrong_key_from_the_provider_is_never_cached() {
    let (p, dks) = setup(DataKeyPolicy::default());
    let (k, sealed) = seal(&dks, b"payload").await;
    let fresh = DataKeys::new(dks.state().keyring.clone(), DataKeyPolicy::default());
    p.lie.store(true, Ordering::SeqCst);
    let r = fresh
        .open_with(cipher::SM4_GCM, "k1", k.wrapped(), |c| {
            c.open(&[0; 12], b"", &sealed)
        })
        .await;
    assert_eq!(r, Err(Error::Authentication));
    assert_eq!(fresh.cache_len(), 0);
    p.lie.store(false, Ordering::SeqCst);
    let r = fresh
        .open_with(cipher::SM4_GCM, "k1", k.wrapped(), |c| {
            c.open(&[0; 12], b"", &sealed)
        })
        .await;
    assert_eq!(r.unwrap(), b"payload");
    assert_eq!(
        p.unwraps.load(Ordering::SeqCst),
        2,
        "the failure was not remembered"
    );
    assert_eq!(fresh.cache_len(), 1);
}

#[tokio::test]
async fn unknown_kek_is_refused_without_a_provider_call() {
    let (p, dks) = setup(DataKeyPolicy::default());
    let r = dks
        .open_with(cipher::SM4_GCM, "other", &[1; 16], |c| {
            c.open(&[0; 12], b"", &[0; 20])
        })
        .await;
    assert_eq!(r, Err(Error::UnknownKek("other".into())));
    assert_eq!(p.unwraps.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cache_is_bounded() {
    let (p, dks) = setup(DataKeyPolicy {
        max_uses: 1,
        cache_size: 4,
        ..Default::default()
    });
    let mut sealed = Vec::new();
    for i in 0..10u8 {
        let (k, s) = seal(&dks, &[i + 1]).await;
        sealed.push((k.wrapped().to_vec(), s));
    }
    // Newest first: opening an old key in between would evict a cached new one.
    for (w, s) in sealed.iter().rev() {
        dks.open_with(cipher::SM4_GCM, "k1", w, |c| c.open(&[0; 12], b"", s))
            .await
            .unwrap();
    }
    assert_eq!(dks.cache_len(), 4);
    // The 4 most recent keys were cached when they were made; the 6 older ones needed the provider.
    assert_eq!(p.unwraps.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn primary_change_retires_the_current_key() {
    let (_p, dks) = setup(DataKeyPolicy::default());
    let first = dks.current().await.unwrap();
    let q = Counting::new("k2");
    let old = dks.state().keyring.primary().clone();
    let ring = Keyring::new(vec![q.clone() as Arc<dyn KeyProvider>, old]).unwrap();
    dks.replace_state(Arc::new(ring), DataKeyPolicy::default());
    let second = dks.current().await.unwrap();
    assert_eq!(&**second.kek_id(), "k2");
    assert_ne!(first.kek_id(), second.kek_id());
    assert_eq!(q.wraps.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_new_sealing_key_opens_without_a_provider_call() {
    let (p, dks) = setup(DataKeyPolicy::default());
    let (k, sealed) = seal(&dks, b"fresh").await;
    let r = dks
        .open_with(cipher::SM4_GCM, "k1", k.wrapped(), |c| {
            c.open(&[0; 12], b"", &sealed)
        })
        .await;
    assert_eq!(r.unwrap(), b"fresh");
    assert_eq!(p.unwraps.load(Ordering::SeqCst), 0);
}

fn legacy_setup(blob: &[u8], plain: &[u8], cache_size: usize) -> (Arc<Counting>, Arc<DataKeys>) {
    let p = Counting::legacy("jd", blob, plain);
    let ring = Keyring::new(vec![p.clone() as Arc<dyn KeyProvider>]).unwrap();
    let policy = DataKeyPolicy {
        cache_size,
        ..Default::default()
    };
    (p, Arc::new(DataKeys::new(Arc::new(ring), policy)))
}

#[tokio::test]
async fn legacy_reads_share_one_call_then_hit_the_cache_and_are_counted() {
    let (p, dks) = legacy_setup(b"old blob", b"kube-apiserver DEK", 16);
    p.delay_ms.store(50, Ordering::SeqCst);
    let provider = dks.state().keyring.primary().clone();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (d, p) = (dks.clone(), provider.clone());
        tasks.push(tokio::spawn(
            async move { d.open_legacy(&p, b"old blob").await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().as_slice(), b"kube-apiserver DEK");
    }
    for _ in 0..936 {
        dks.open_legacy(&provider, b"old blob").await.unwrap();
    }
    assert_eq!(
        p.legacy_calls.load(Ordering::SeqCst),
        1,
        "1000 reads, 1 call"
    );
    assert_eq!(dks.stats.legacy_reads.load(Ordering::SeqCst), 1000);
    assert_eq!(dks.legacy_cache_len(), 1);
    assert_eq!(dks.cache_len(), 0, "data keys are cached apart");
    assert!(dks.legacy_opening.in_flight() == 0);
    assert_eq!(p.unwraps.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn legacy_failures_are_not_cached_or_counted() {
    let (p, dks) = legacy_setup(b"old blob", b"dek", 16);
    let provider = dks.state().keyring.primary().clone();
    p.down.store(true, Ordering::SeqCst);
    let e = dks.open_legacy(&provider, b"old blob").await.unwrap_err();
    assert!(
        matches!(e, Error::Provider(ProviderError::Unavailable(_))),
        "{e:?}"
    );
    p.down.store(false, Ordering::SeqCst);
    let e = dks.open_legacy(&provider, b"garbage").await.unwrap_err();
    assert!(
        matches!(e, Error::Provider(ProviderError::InvalidWrappedKey(_))),
        "{e:?}"
    );
    assert_eq!(dks.legacy_cache_len(), 0);
    assert_eq!(dks.stats.legacy_reads.load(Ordering::SeqCst), 0);
    let got = dks.open_legacy(&provider, b"old blob").await.unwrap();
    assert_eq!(got.as_slice(), b"dek");
    assert_eq!(p.legacy_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_empty_legacy_plaintext_is_an_error_never_an_answer() {
    let (p, dks) = legacy_setup(b"old blob", b"", 16);
    let provider = dks.state().keyring.primary().clone();
    let e = dks.open_legacy(&provider, b"old blob").await.unwrap_err();
    assert!(
        matches!(e, Error::Provider(ProviderError::Unavailable(_))),
        "{e:?}"
    );
    assert_eq!(dks.legacy_cache_len(), 0);
    assert_eq!(p.legacy_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn legacy_cache_is_bounded() {
    let (p, dks) = legacy_setup(b"", b"", 4);
    let provider = dks.state().keyring.primary().clone();
    for i in 0..10u8 {
        lock(&p.legacy_blobs).insert(vec![i; 8], vec![i + 1; 32]);
    }
    for i in 0..10u8 {
        let got = dks.open_legacy(&provider, &[i; 8]).await.unwrap();
        assert_eq!(got.as_slice(), [i + 1; 32]);
    }
    assert_eq!(dks.legacy_cache_len(), 4);
    dks.open_legacy(&provider, &[9; 8]).await.unwrap();
    dks.open_legacy(&provider, &[0; 8]).await.unwrap();
    assert_eq!(
        p.legacy_calls.load(Ordering::SeqCst),
        11,
        "the newest stayed cached, the oldest was evicted"
    );
}

#[test]
fn cache_key_separates_fields() {
    assert_ne!(cache_key(1, "ab", b"c"), cache_key(1, "a", b"bc"));
    assert_ne!(cache_key(1, "a", b"b"), cache_key(2, "a", b"b"));
}
