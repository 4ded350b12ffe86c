//! Sealing and opening payloads (DESIGN §2): a payload is sealed with SM4-GCM under the current data key,
//! and the result carries, in its authenticated header, what it takes to find that key again.
//!
//! Opening also reads the legacy form (what JD Cloud's own plugin wrote: the raw KMS blob, no header)
//! through keys with legacy reads on; sealing only ever writes format 1. The order of tries is
//! [`Envelope::open`]'s.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cipher::NONCE_LEN;
use crate::ciphertext;
use crate::datakeys::DataKeys;
use crate::error::Error;
use crate::provider::ProviderError;

/// A sealed payload and the KEK that protects its data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The format-1 ciphertext.
    pub ciphertext: Vec<u8>,
    /// The KEK that wrapped the data key (v2 `EncryptResponse.key_id`).
    pub kek_id: Arc<str>,
}

/// Seals and opens format-1 ciphertexts.
pub struct Envelope {
    datakeys: Arc<DataKeys>,
}

impl Envelope {
    /// An envelope over `datakeys`.
    pub fn new(datakeys: Arc<DataKeys>) -> Self {
        Self { datakeys }
    }

    /// The data keys it seals and opens with.
    pub fn datakeys(&self) -> &Arc<DataKeys> {
        &self.datakeys
    }

    /// The primary KEK id: what KMS v2 `Status.key_id` reports.
    pub fn primary_kek_id(&self) -> String {
        self.datakeys.primary().kek_id().to_string()
    }

    /// Seals `plaintext` under the current data key.
    pub async fn seal(&self, plaintext: &[u8]) -> Result<Sealed, Error> {
        if plaintext.is_empty() {
            return Err(Error::EmptyPlaintext);
        }
        let key = self.datakeys.current().await?;
        let mut nonce = [0u8; NONCE_LEN];
        // A per-thread ChaCha12 generator seeded (and periodically reseeded) from the OS CSPRNG: a fresh
        // unpredictable nonce per message without a system call on every Encrypt.
        rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
        let mut out = Vec::new();
        ciphertext::write_header(
            &mut out,
            key.cipher().id(),
            key.kek_id(),
            key.wrapped(),
            plaintext.len(),
        )?;
        let header_len = out.len();
        out.extend_from_slice(&nonce);
        // The AAD is the header; seal_append only reads `aad` and appends, so split the borrow.
        let (aad, _) = out.split_at(header_len);
        let aad = aad.to_vec();
        key.cipher()
            .seal_append(&nonce, &aad, plaintext, &mut out)
            .map_err(|_| Error::Authentication)?;
        Ok(Sealed {
            ciphertext: out,
            kek_id: key.kek_id().clone(),
        })
    }

    /// Opens a ciphertext. The order of tries (DESIGN §2, docs/format.md):
    ///
    /// 1. As format 1: the KEK is found by the id in the header, never by what the caller claims it is.
    /// 2. If that fails because the bytes are not a format-1 ciphertext we can open — they do not parse,
    ///    name a KEK not in the ring, carry a wrapped key the KEK rejects, or fail the tag — as the legacy
    ///    form, through each key with legacy reads on (primary first, then `PreviousKeys` in config order),
    ///    stopping at the first that opens it. A format-1 failure that says nothing about the bytes (the
    ///    provider is unreachable, refuses, denies access) is returned as it is, without a legacy try.
    /// 3. With no legacy-reading key (or an empty input) the format-1 error stands: a ciphertext that is not
    ///    format 1 is `Malformed`, and no remote call is made.
    ///
    /// When both fail: for input without the `GMK` magic, the legacy error (the format-1 one would only say
    /// "no magic"); for input with it, the format-1 error — except that a legacy try that found the remote
    /// `Unavailable` is always reported as `Unavailable` (with the format-1 error in its message): the
    /// remote never said the bytes are bad, so the caller must retry. Among several legacy keys the error
    /// reported is the one that leaves most hope (`Unavailable` > `PermissionDenied` > `Refused` > rejected
    /// bytes), the first among equals.
    pub async fn open(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let format1 = match self.open_format1(ciphertext).await {
            Ok(plain) => return Ok(plain),
            Err(e) if !not_format1(&e) => return Err(e),
            Err(e) => e,
        };
        let readers = self.datakeys.keyring().legacy_readers().to_vec();
        if readers.is_empty() || ciphertext.is_empty() {
            return Err(format1);
        }
        if let Some(plain) = self.datakeys.cached_legacy(&readers, ciphertext) {
            return Ok(plain);
        }
        let mut legacy: Option<Error> = None;
        for provider in &readers {
            match self.datakeys.open_legacy(provider, ciphertext).await {
                Ok(plain) => return Ok(plain),
                Err(e) if legacy.as_ref().is_none_or(|l| rank(&e) > rank(l)) => legacy = Some(e),
                Err(_) => {}
            }
        }
        let Some(legacy) = legacy else {
            return Err(format1);
        };
        let gmk = ciphertext::has_magic(ciphertext);
        Err(match legacy {
            Error::Provider(ProviderError::Unavailable(m)) if gmk => Error::Provider(
                ProviderError::Unavailable(format!("{m} (as format 1: {format1})").into()),
            ),
            e if !gmk => e,
            _ => format1,
        })
    }

    async fn open_format1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let parsed = ciphertext::parse(ciphertext)?;
        let plain = self
            .datakeys
            .open_with(parsed.cipher_id, parsed.kek_id, parsed.wrapped_dk, |c| {
                c.open(parsed.nonce, parsed.header, parsed.sealed)
            })
            .await?;
        Ok(Zeroizing::new(plain))
    }
}

/// Whether a format-1 failure says the bytes are not a format-1 ciphertext this ring opens (so they may be
/// the legacy form), rather than that a provider could not answer.
fn not_format1(e: &Error) -> bool {
    matches!(
        e,
        Error::Malformed(_)
            | Error::UnknownKek(_)
            | Error::Authentication
            | Error::Provider(ProviderError::InvalidWrappedKey(_))
    )
}

/// Which legacy failure to report when every legacy key failed: the one that leaves most hope for the
/// ciphertext (retry later > fix access > fix the key > the bytes are bad); the first among equals.
fn rank(e: &Error) -> u8 {
    match e {
        Error::Provider(ProviderError::Unavailable(_)) => 3,
        Error::Provider(ProviderError::PermissionDenied(_)) => 2,
        Error::Provider(ProviderError::Refused(_) | ProviderError::Config(_)) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::config::DataKeyPolicy;
    use crate::datakeys::test_provider::Counting;
    use crate::keyring::Keyring;
    use crate::provider::KeyProvider;

    /// What JD Cloud's plugin stored: an opaque blob, no header.
    const OLD: &[u8] = b"\x01\x9c\x17 opaque KMS blob of JD Cloud's plugin";

    fn envelope(keys: &[&Arc<Counting>]) -> Envelope {
        let ring = Keyring::new(
            keys.iter()
                .map(|k| Arc::clone(k) as Arc<dyn KeyProvider>)
                .collect(),
        )
        .unwrap();
        Envelope::new(Arc::new(DataKeys::new(
            Arc::new(ring),
            DataKeyPolicy::default(),
        )))
    }

    fn calls(p: &Counting) -> usize {
        p.legacy_calls.load(Ordering::SeqCst)
    }

    /// Bytes that begin like format 1: the magic, then a header naming `kek` with a wrapped key of
    /// `wrapped_len` bytes (0: the bytes stop parsing right after the magic).
    fn gmk(kek: &str, wrapped_len: u16) -> Vec<u8> {
        let mut b = b"GMK".to_vec();
        if wrapped_len == 0 {
            b.extend_from_slice(b"\x7f random after the magic");
            return b;
        }
        b.extend_from_slice(&[1, 1, kek.len() as u8]);
        b.extend_from_slice(kek.as_bytes());
        b.extend_from_slice(&wrapped_len.to_be_bytes());
        b.extend(std::iter::repeat_n(7, usize::from(wrapped_len) + 12 + 40));
        b
    }

    #[tokio::test]
    async fn format_1_is_opened_first_without_a_legacy_call() {
        let (k1, jd) = (Counting::new("k1"), Counting::legacy("jd", OLD, b"dek"));
        let env = envelope(&[&k1, &jd]);
        let sealed = env.seal(b"new secret").await.unwrap();
        assert!(
            sealed.ciphertext.starts_with(b"GMK\x01"),
            "seal writes format 1"
        );
        assert_eq!(
            env.open(&sealed.ciphertext).await.unwrap().as_slice(),
            b"new secret"
        );
        assert_eq!(calls(&jd), 0);
    }

    #[tokio::test]
    async fn without_a_legacy_key_non_format_1_is_malformed_with_no_call() {
        let k1 = Counting::new("k1");
        // Knows the blob, but legacy reads are off.
        let jd = Counting::new("jd");
        jd.legacy_blobs
            .lock()
            .unwrap()
            .insert(OLD.to_vec(), b"dek".to_vec());
        let env = envelope(&[&k1, &jd]);
        for bad in [OLD, b"", &gmk("zz", 16)] {
            let e = env.open(bad).await.unwrap_err();
            assert!(
                matches!(e, Error::Malformed(_) | Error::UnknownKek(_)),
                "{e:?}"
            );
        }
        assert_eq!(calls(&jd) + calls(&k1), 0);
        assert_eq!(jd.unwraps.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn legacy_blobs_open_whatever_their_first_bytes_and_whichever_way_format_1_fails() {
        let (k1, jd) = (Counting::new("k1"), Counting::legacy("jd", OLD, b"old dek"));
        let blobs = [
            (OLD.to_vec(), "no magic"),
            (gmk("", 0), "magic, then unparsable"),
            (gmk("zz", 16), "unknown kek_id"),
            (gmk("k1", 3), "wrapped key rejected"),
            (gmk("k1", 16), "tag mismatch"),
        ];
        let env = envelope(&[&k1, &jd]);
        for (i, (blob, why)) in blobs.iter().enumerate() {
            jd.legacy_blobs
                .lock()
                .unwrap()
                .insert(blob.clone(), vec![i as u8 + 1; 32]);
            let got = env
                .open(blob)
                .await
                .unwrap_or_else(|e| panic!("{why}: {e}"));
            assert_eq!(got.as_slice(), [i as u8 + 1; 32], "{why}");
        }
        // The last two reached k1 as format 1 first.
        assert_eq!(k1.unwraps.load(Ordering::SeqCst), 2);
        assert_eq!(calls(&jd), 5);
        let stats = env.datakeys().stats();
        assert_eq!(stats.legacy_reads.load(Ordering::SeqCst), 5);
        // Again: from the cache.
        for (blob, _) in &blobs {
            env.open(blob).await.unwrap();
        }
        assert_eq!(calls(&jd), 5);
        assert_eq!(stats.legacy_reads.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn when_both_fail_non_gmk_input_gets_the_legacy_error_gmk_input_the_format_1_error() {
        let (k1, jd) = (Counting::new("k1"), Counting::legacy("jd", OLD, b"dek"));
        let env = envelope(&[&k1, &jd]);
        let e = env.open(b"garbage").await.unwrap_err();
        assert!(
            matches!(e, Error::Provider(ProviderError::InvalidWrappedKey(_))),
            "{e:?}"
        );
        assert_eq!(
            env.open(&gmk("zz", 16)).await,
            Err(Error::UnknownKek("zz".into()))
        );
        let mut tampered = env.seal(b"new secret").await.unwrap().ciphertext;
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(env.open(&tampered).await, Err(Error::Authentication));
        assert_eq!(calls(&jd), 3, "one legacy try each");
    }

    #[tokio::test]
    async fn an_unreachable_legacy_key_is_unavailable_never_invalid_argument() {
        let (k1, jd) = (Counting::new("k1"), Counting::legacy("jd", OLD, b"dek"));
        let env = envelope(&[&k1, &jd]);
        jd.down.store(true, Ordering::SeqCst);
        for blob in [OLD.to_vec(), gmk("zz", 16), gmk("", 0)] {
            let e = env.open(&blob).await.unwrap_err();
            assert!(
                matches!(e, Error::Provider(ProviderError::Unavailable(_))),
                "{e:?}"
            );
        }
        let e = env.open(&gmk("zz", 16)).await.unwrap_err();
        assert!(e.to_string().contains("as format 1"), "{e}");
        jd.down.store(false, Ordering::SeqCst);
        assert_eq!(env.open(OLD).await.unwrap().as_slice(), b"dek");
    }

    #[tokio::test]
    async fn a_format_1_outage_is_returned_without_a_legacy_try() {
        let (k1, jd) = (Counting::new("k1"), Counting::legacy("jd", OLD, b"dek"));
        let sealed = envelope(&[&k1, &jd]).seal(b"x").await.unwrap();
        let fresh = envelope(&[&k1, &jd]);
        k1.down.store(true, Ordering::SeqCst);
        let e = fresh.open(&sealed.ciphertext).await.unwrap_err();
        assert!(
            matches!(e, Error::Provider(ProviderError::Unavailable(_))),
            "{e:?}"
        );
        assert_eq!(calls(&jd), 0);
    }

    #[tokio::test]
    async fn legacy_keys_are_tried_primary_first_then_in_config_order_until_one_opens() {
        let a = Counting::legacy("jd-a", b"of a", b"dek a");
        let k1 = Counting::new("k1");
        let b = Counting::legacy("jd-b", b"of b", b"dek b");
        let c = Counting::legacy("jd-c", b"of c", b"dek c");
        let env = envelope(&[&a, &k1, &b, &c]);
        let tries = || [calls(&a), calls(&b), calls(&c)];
        assert_eq!(env.open(b"of a").await.unwrap().as_slice(), b"dek a");
        assert_eq!(tries(), [1, 0, 0]);
        assert_eq!(env.open(b"of b").await.unwrap().as_slice(), b"dek b");
        assert_eq!(tries(), [2, 1, 0]);
        assert_eq!(env.open(b"of c").await.unwrap().as_slice(), b"dek c");
        assert_eq!(tries(), [3, 2, 1]);
        // Once opened, a blob comes from the cache of whichever key opened it: no tries of the others.
        assert_eq!(env.open(b"of c").await.unwrap().as_slice(), b"dek c");
        assert_eq!(tries(), [3, 2, 1]);
        // A down key does not stop the others; its outage is what is reported if none opens the bytes.
        a.down.store(true, Ordering::SeqCst);
        b.legacy_blobs
            .lock()
            .unwrap()
            .insert(b"new of b".to_vec(), b"dek b2".to_vec());
        assert_eq!(env.open(b"new of b").await.unwrap().as_slice(), b"dek b2");
        assert_eq!(tries(), [4, 3, 1]);
        let e = env.open(b"of nobody").await.unwrap_err();
        assert!(
            matches!(e, Error::Provider(ProviderError::Unavailable(_))),
            "{e:?}"
        );
        assert_eq!(tries(), [5, 4, 2]);
        assert_eq!(k1.legacy_calls.load(Ordering::SeqCst), 0);
    }
}
