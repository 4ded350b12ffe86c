//! The `sdf` provider: the SM2 key-encryption key lives inside a GM/T 0018 cipher machine (服务器密码机)
//! and is used through the vendor's SDF library (DESIGN §4, issue 12). The plugin never sees the private
//! key; it asks the device to encrypt (`SDF_ExternalEncrypt_ECC` with the exported public key) and to
//! decrypt (`SDF_InternalDecrypt_ECC` under the private-key access right).
//!
//! - Same key, same id, same ciphertexts as `sm2`: the KEK id is derived from the exported public key
//!   with [`super::sm2::derive_kek_id`], and the wrapped data key is the GM/T 0009 DER `SM2Cipher` built
//!   by [`Sm2CipherParts`], byte for byte what the `sm2` provider writes.
//! - Data keys come from the device's RNG (`SDF_GenerateRandom`, [`KeyProvider::generate_data_key`]).
//! - A bounded pool of sessions (`SdfSessions`). Every FFI call runs on a blocking thread, never on the
//!   async runtime, and one device operation is bounded by [`DEVICE_CALL_TIMEOUT`]; the caller's gRPC
//!   deadline still holds above that (the api layer). A session that reports a communication failure,
//!   an impossible answer or an unexpected error is closed; the next call opens a fresh one.
//! - A refused access password is tried once: the provider then fails closed (every call answers
//!   `PermissionDenied` without touching the device, and health says why) until a reload (`SIGHUP`)
//!   builds a new provider from the fixed PIN file. Devices lock keys after a few wrong passwords; a
//!   retry loop would lock the key for every master.
//! - The device is opened and the public key exported at load, but the password is not tried there: a
//!   wrong one would otherwise stop the plugin from starting, and a restarting static pod would retry it.
//!   The health probe at start does the first unwrap, so a wrong password shows within a second.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gm_sdf::{
    Device, DeviceInfo, EccCipher, EccPublicKey, ErrorKind as SdfKind, Library, Profile, SdfError,
    Session,
};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::sm2::{Sm2CipherParts, derive_kek_id};
use super::{Detail, KeyProvider, ProviderError};
use crate::config::SdfSpec;
use crate::secret::{DATA_KEY_LEN, DataKey, SecretString};

/// The longest one device operation may take: waiting for a pool session, opening one if needed, the
/// access right if needed, and the call itself. A cipher machine answers an SM2 operation in
/// milliseconds; seconds mean it is unreachable or wedged, and then `Unavailable` (retry later) is the
/// right answer. kube-apiserver's own 3 s deadline usually ends the call first (`DeadlineExceeded`);
/// this bound is for callers without one (the health probe, `check`).
pub const DEVICE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest loading may take (open the device, read its info, export the public key): opening may
/// connect and authenticate to a network device, so more than one call's time, but bounded, so a hung
/// device cannot hang the start or a `SIGHUP` reload forever.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// The health round trip (a device encrypt and decrypt) runs once a minute, the rate at which
/// kube-apiserver polls v2 Status: each one is a private-key operation in the device's audit log.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(60);

/// What a device call was for; decides how some device errors map (DESIGN §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Load,
    Random,
    Wrap,
    Unwrap,
    Describe,
}

/// An SM2 key-encryption key inside a cipher machine.
pub struct SdfProvider {
    kek_id: String,
    key_index: u32,
    profile: Profile,
    library: PathBuf,
    public_key: EccPublicKey,
    /// What `SDF_GetDeviceInfo` said at load.
    info: DeviceInfo,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for SdfProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdfProvider")
            .field("kek_id", &self.kek_id)
            .field("library", &self.library)
            .field("profile", &self.profile)
            .field("key_index", &self.key_index)
            .finish_non_exhaustive()
    }
}

/// The device and its sessions.
struct Pool {
    device: Device,
    key_index: u32,
    pin: Option<SecretString>,
    /// `SdfPinFile`, for messages.
    pin_file: Option<PathBuf>,
    /// One permit per session that may exist: at most `SdfSessions` device operations at a time. A permit
    /// is released when the blocking call returns, not when its caller gives up, so calls stuck in a
    /// wedged device still count.
    permits: Arc<Semaphore>,
    sessions: usize,
    idle: Mutex<Vec<Session>>,
    /// Held while asking for the access right, so that concurrent first unwraps after a refused
    /// password do not each try it again.
    authorising: Mutex<()>,
    /// Why the provider fails closed, once the device refused the access password.
    refused: OnceLock<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SdfProvider {
    /// Loads the vendor library, opens the device, reads its info and exports the encryption public
    /// key at `SdfKeyIndex`; the KEK id is derived from that key unless `Sm2KeyId` is set.
    pub fn load(spec: &SdfSpec) -> Result<Self, ProviderError> {
        // The password file first: a bad one is a config error, found before any device call.
        let pin = spec.pin_file.as_deref().map(read_pin).transpose()?;
        let library = spec.library.clone();
        let (profile, index) = (spec.profile, spec.key_index);
        let (device, session, info, public_key) = off_runtime(move || {
            let err = |e: SdfError| map_error(Op::Load, index, e);
            let lib = Library::load(&library, profile)
                .map_err(|e| ProviderError::Config(Detail::from("SdfLibrary").because(e)))?;
            let device = Device::open(lib).map_err(err)?;
            let mut session = device.open_session().map_err(err)?;
            let info = session.device_info().map_err(err)?;
            let public_key = session.export_enc_public_key(index).map_err(err)?;
            Ok((device, session, info, public_key))
        })?;
        let public = sm2::PublicKey::from_sec1_bytes(&public_key.to_sec1_uncompressed()).map_err(
            |_| {
                ProviderError::Refused(
                    format!(
                        "SDF_ExportEncPublicKey_ECC for key index {index} returned a point that is not on the SM2 curve (is SdfProfile {profile} right for this library?)"
                    )
                    .into(),
                )
            },
        )?;
        let kek_id = match &spec.key_id {
            Some(id) => id.clone(),
            None => derive_kek_id(&public)?,
        };
        let sessions = usize::try_from(spec.sessions.max(1)).unwrap_or(1);
        tracing::info!(
            key = %kek_id,
            library = %spec.library.display(),
            profile = %profile,
            key_index = index,
            issuer = %info.issuer,
            device = %info.device_name,
            serial = %info.serial,
            sessions,
            "SDF device opened and encryption public key exported"
        );
        Ok(Self {
            kek_id,
            key_index: index,
            profile,
            library: spec.library.clone(),
            public_key,
            info,
            pool: Arc::new(Pool {
                device,
                key_index: index,
                pin,
                pin_file: spec.pin_file.clone(),
                permits: Arc::new(Semaphore::new(sessions)),
                sessions,
                // The load session has no access right yet; it serves the first call.
                idle: Mutex::new(vec![session]),
                authorising: Mutex::new(()),
                refused: OnceLock::new(),
            }),
        })
    }
}

/// Reads `SdfPinFile` with the secret-file rules of key files. Only line endings at the end go (`echo PIN >
/// file` writes one); any other character, spaces included, is part of the password: a wrong password costs a
/// try before the device locks the key, so nothing is guessed.
fn read_pin(path: &std::path::Path) -> Result<SecretString, ProviderError> {
    let config = |msg: String| ProviderError::Config(format!("SdfPinFile: {msg}").into());
    let bytes = crate::keyfile::read_secret_file(path).map_err(|e| config(e.to_string()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| config(format!("{} is not UTF-8 text", path.display())))?;
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(config(format!(
            "{} is empty (leave SdfPinFile out if the device needs no password)",
            path.display()
        )));
    }
    Ok(SecretString::new(pin.to_owned()))
}

/// Runs `f` on a thread of its own and waits at most [`LOAD_TIMEOUT`] for it, without blocking an async
/// worker thread if called from one (a `SIGHUP` reload runs on the runtime). On a time-out the thread is
/// left to finish in the vendor library, and whatever it opened is closed when it does.
fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("sdf-load".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| {
            ProviderError::Unavailable(
                Detail::from("cannot start a thread to open the SDF device").because(e),
            )
        })?;
    let wait = || rx.recv_timeout(LOAD_TIMEOUT);
    let got = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    };
    got.map_err(|_| {
        ProviderError::Unavailable(
            format!(
                "the SDF device did not open within {} s (is the vendor library's device address right, and the device up?)",
                LOAD_TIMEOUT.as_secs()
            )
            .into(),
        )
    })?
}

/// Maps a device error to what it means for the caller (DESIGN §6).
fn map_error(op: Op, key_index: u32, e: SdfError) -> ProviderError {
    let what = match op {
        Op::Load => "opening the SDF device",
        Op::Random => "drawing a data key from the device RNG",
        Op::Wrap => "wrapping a data key in the device",
        Op::Unwrap => "unwrapping a data key in the device",
        Op::Describe => "reading the device info",
    };
    // The device's error follows the hint (Detail::because names it after the message).
    let detail = |hint: &str| Detail::from(format!("{what}{hint}")).because(e.clone());
    match e.kind() {
        SdfKind::Communication => ProviderError::Unavailable(detail("")),
        SdfKind::PermissionDenied => ProviderError::PermissionDenied(detail(&format!(
            " (the private-key access right for key index {key_index})"
        ))),
        SdfKind::KeyNotFound => ProviderError::Refused(detail(&format!(
            " (no SM2 encryption key pair at SdfKeyIndex {key_index})"
        ))),
        // The device refused the ciphertext: corrupted, or sealed by another key.
        SdfKind::Decrypt if op == Op::Unwrap => ProviderError::InvalidWrappedKey(detail("")),
        // A wrapped key that does not fit the profile's ECCCipher (never one this provider wrote).
        SdfKind::InvalidInput if op == Op::Unwrap => ProviderError::InvalidWrappedKey(detail("")),
        SdfKind::NotSupported => {
            ProviderError::Refused(detail(" (is SdfProfile right for this library?)"))
        }
        SdfKind::Library => ProviderError::Config(detail("")),
        // Success with an impossible answer (a wrong-length key, a point off the curve): a device fault,
        // or the wrong profile. Retrying may help; the bytes the caller sent are not to blame.
        SdfKind::BadResponse => ProviderError::Unavailable(detail(
            " (a device fault, or SdfProfile does not match the library)",
        )),
        _ => ProviderError::Unavailable(detail("")),
    }
}

impl Pool {
    fn check_refused(&self) -> Result<(), ProviderError> {
        match self.refused.get() {
            Some(why) => Err(ProviderError::PermissionDenied(why.as_str().into())),
            None => Ok(()),
        }
    }

    /// Runs `f` with a pool session on a blocking thread, within [`DEVICE_CALL_TIMEOUT`].
    async fn run<T, F>(self: &Arc<Self>, op: Op, f: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> Result<T, SdfError> + Send + 'static,
    {
        self.check_refused()?;
        let pool = self.clone();
        let work = async move {
            let permit =
                pool.permits.clone().acquire_owned().await.map_err(|_| {
                    ProviderError::Unavailable("the SDF session pool is closed".into())
                })?;
            let inner = pool.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                inner.call(op, f)
            })
            .await
            .map_err(|e| {
                ProviderError::Unavailable(
                    Detail::from("an SDF device call did not complete").because(e),
                )
            })?
        };
        match tokio::time::timeout(DEVICE_CALL_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Unavailable(
                format!(
                    "no answer from the SDF device within {} ms (all {} sessions busy, or the device is slow or unreachable)",
                    DEVICE_CALL_TIMEOUT.as_millis(),
                    self.sessions
                )
                .into(),
            )),
        }
    }

    /// On the blocking thread: an idle session or a new one, the access right if the call needs it,
    /// the call; the session goes back to the pool only if nothing suggests it is broken.
    fn call<T>(
        &self,
        op: Op,
        f: impl FnOnce(&mut Session) -> Result<T, SdfError>,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        self.check_refused()?;
        let idle = lock(&self.idle).pop();
        let mut session = match idle {
            Some(s) => s,
            None => self
                .device
                .open_session()
                .map_err(|e| map_error(op, self.key_index, e))?,
        };
        if op == Op::Unwrap {
            // On failure the session is dropped (closed): a new one tries afresh, at most once.
            self.authorise(&mut session)?;
        }
        let r = f(&mut session);
        let healthy = match &r {
            Ok(_) => true,
            // About the caller's bytes, not the session.
            Err(e) => matches!(e.kind(), SdfKind::Decrypt | SdfKind::InvalidInput),
        };
        // A call that outlived the time-out was abandoned by its caller: the session is suspect.
        if healthy && started.elapsed() < DEVICE_CALL_TIMEOUT {
            lock(&self.idle).push(session);
        }
        r.map_err(|e| map_error(op, self.key_index, e))
    }

    /// Obtains the private-key access right for this session, once per session. A refused password
    /// makes the provider fail closed.
    fn authorise(&self, session: &mut Session) -> Result<(), ProviderError> {
        let Some(pin) = &self.pin else {
            // The device needs no password (SdfPinFile not set).
            return Ok(());
        };
        if session.has_private_key_access_right(self.key_index) {
            return Ok(());
        }
        let _one_at_a_time = lock(&self.authorising);
        // Another session's attempt may have been refused while this one waited.
        self.check_refused()?;
        match session.get_private_key_access_right(self.key_index, pin.expose().as_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == SdfKind::PermissionDenied => {
                let file = self
                    .pin_file
                    .as_ref()
                    .map_or_else(String::new, |f| format!(" from {}", f.display()));
                let why = format!(
                    "the SDF device refused the access password{file} for key index {} ({e}); not retried (devices lock a key after a few wrong passwords): fix SdfPinFile, then reload with SIGHUP",
                    self.key_index
                );
                tracing::error!(key_index = self.key_index, error = %e, "{why}");
                let why = self.refused.get_or_init(|| why).clone();
                // `why` names the device's error already.
                Err(ProviderError::PermissionDenied(Detail::from(why)))
            }
            Err(e) => Err(map_error(Op::Unwrap, self.key_index, e)),
        }
    }
}

/// The device's `ECCCipher` as the DER `SM2Cipher` of the ciphertext header.
fn cipher_to_der(c: EccCipher) -> Result<Vec<u8>, ProviderError> {
    Sm2CipherParts {
        x: c.x,
        y: c.y,
        hash: c.hash,
        ciphertext: c.ciphertext,
    }
    .to_der()
    .map_err(|why| {
        ProviderError::Unavailable(
            format!("SDF_ExternalEncrypt_ECC returned an unusable SM2 ciphertext: {why}").into(),
        )
    })
}

/// A wrapped data key from a ciphertext header (untrusted) as the device's `ECCCipher`. Only a
/// well-formed `SM2Cipher` with C1 on the curve and a 16-byte C2 reaches the device.
fn der_to_cipher(kek_id: &str, der: &[u8]) -> Result<EccCipher, ProviderError> {
    let parts = Sm2CipherParts::from_der(der).map_err(|why| {
        ProviderError::InvalidWrappedKey(format!("wrapped key under {kek_id}: {why}").into())
    })?;
    if parts.ciphertext.len() != DATA_KEY_LEN {
        return Err(ProviderError::InvalidWrappedKey(
            format!(
                "SM2-wrapped key under {kek_id} is {} bytes, not {DATA_KEY_LEN}",
                parts.ciphertext.len()
            )
            .into(),
        ));
    }
    Ok(EccCipher {
        x: parts.x,
        y: parts.y,
        hash: parts.hash,
        ciphertext: parts.ciphertext,
    })
}

#[async_trait]
impl KeyProvider for SdfProvider {
    fn kek_id(&self) -> &str {
        &self.kek_id
    }

    fn kind(&self) -> &'static str {
        "sdf"
    }

    async fn generate_data_key(&self) -> Result<Option<DataKey>, ProviderError> {
        let bytes = self
            .pool
            .run(Op::Random, |s| s.generate_random(DATA_KEY_LEN))
            .await?;
        DataKey::from_slice(&bytes).map(Some).ok_or_else(|| {
            ProviderError::Unavailable(
                format!(
                    "SDF_GenerateRandom returned {} bytes, not {DATA_KEY_LEN}",
                    bytes.len()
                )
                .into(),
            )
        })
    }

    async fn wrap(&self, dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
        let key = self.public_key;
        let plain = Zeroizing::new(*dk.as_bytes());
        let cipher = self
            .pool
            .run(Op::Wrap, move |s| {
                s.external_encrypt(&key, plain.as_slice())
            })
            .await?;
        cipher_to_der(cipher)
    }

    async fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, ProviderError> {
        let cipher = der_to_cipher(&self.kek_id, wrapped)?;
        let index = self.key_index;
        let plain = self
            .pool
            .run(Op::Unwrap, move |s| s.internal_decrypt(index, &cipher))
            .await?;
        // gm-sdf already refuses a plaintext whose length differs from C2's; a device that answers
        // success with a wrong-length key is faulty, not the caller's bytes.
        DataKey::from_slice(&plain).ok_or_else(|| {
            ProviderError::Unavailable(
                format!(
                    "SDF_InternalDecrypt_ECC returned {} bytes, not {DATA_KEY_LEN} (device fault)",
                    plain.len()
                )
                .into(),
            )
        })
    }

    async fn describe(&self) -> Result<String, ProviderError> {
        self.pool.check_refused()?;
        // Asked live, so `check` also shows that the device answers now.
        let info = self.pool.run(Op::Describe, |s| s.device_info()).await?;
        let changed = if info == self.info {
            ""
        } else {
            " (differs from the device seen at load)"
        };
        Ok(format!(
            "sdf device: issuer {:?}, device {:?}, serial {:?}{changed}; library {}, profile {}, key index {}, {} sessions, access password {}",
            info.issuer,
            info.device_name,
            info.serial,
            self.library.display(),
            self.profile,
            self.key_index,
            self.pool.sessions,
            if self.pool.pin.is_some() {
                "from SdfPinFile"
            } else {
                "none"
            },
        ))
    }

    fn probe_interval(&self) -> Duration {
        PROBE_INTERVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::provider::sm2::{Sm2Provider, generate_pem, parse_private_key_pem};

    /// A PIN file with `contents` and `mode` in a fresh directory.
    fn pin_file(contents: &[u8], mode: u32) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, p)
    }

    #[test]
    fn pin_files_follow_the_secret_file_rules_and_keep_every_character_but_the_line_end() {
        let (_d, p) = pin_file(b"12345678\n", 0o600);
        assert_eq!(read_pin(&p).unwrap().expose(), "12345678");
        let (_d, p) = pin_file(b" a b\r\n", 0o400);
        assert_eq!(read_pin(&p).unwrap().expose(), " a b");
        let (_d, p) = pin_file(b"1234", 0o644);
        let e = read_pin(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string().contains("SdfPinFile") && e.to_string().contains("0644"),
            "{e}"
        );
        let (_d, p) = pin_file(b"\n", 0o600);
        let e = read_pin(&p).unwrap_err().to_string();
        assert!(e.contains("SdfPinFile") && e.contains("empty"), "{e}");
        let (_d, p) = pin_file(&[0xff, 0xfe], 0o600);
        let e = read_pin(&p).unwrap_err().to_string();
        assert!(e.contains("SdfPinFile") && e.contains("UTF-8"), "{e}");
        let e = read_pin(std::path::Path::new("/nonexistent/pin"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SdfPinFile") && e.contains("/nonexistent/pin"),
            "{e}"
        );
    }

    #[test]
    fn device_errors_map_to_the_design_kinds() {
        let code = |c: u32| SdfError::code("SDF_InternalDecrypt_ECC", c);
        let kind = |op, e| map_error(op, 1, e).kind();
        let base = gm_sdf::SDR_BASE;
        assert_eq!(
            kind(Op::Unwrap, code(gm_sdf::SDR_COMMFAIL)),
            ErrorKind::Unavailable
        );
        assert_eq!(kind(Op::Load, code(base + 5)), ErrorKind::Unavailable);
        assert_eq!(
            kind(Op::Unwrap, code(gm_sdf::SDR_PRKRERR)),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            kind(Op::Unwrap, code(gm_sdf::SDR_PARDENY)),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            kind(Op::Load, code(gm_sdf::SDR_KEYNOTEXIST)),
            ErrorKind::Refused
        );
        assert_eq!(kind(Op::Unwrap, code(base + 0x16)), ErrorKind::InvalidInput);
        assert_eq!(kind(Op::Unwrap, code(base + 0x0C)), ErrorKind::InvalidInput);
        assert_eq!(kind(Op::Wrap, code(base + 0x0C)), ErrorKind::Unavailable);
        assert_eq!(kind(Op::Wrap, code(base + 9)), ErrorKind::Refused);
        assert_eq!(kind(Op::Unwrap, code(base + 1)), ErrorKind::Unavailable);
        let e = map_error(Op::Unwrap, 3, code(gm_sdf::SDR_PRKRERR));
        assert!(e.to_string().contains("key index 3"), "{e}");
        assert!(e.to_string().contains("SDR_PRKRERR"), "{e}");
        assert!(e.cause().is_some());
    }

    #[tokio::test]
    async fn the_sm2_providers_wrapped_keys_convert_both_ways_byte_for_byte() {
        let (pem, _, _) = generate_pem().unwrap();
        let p = Sm2Provider::from_secret_key(parse_private_key_pem(&pem).unwrap(), None).unwrap();
        for _ in 0..16 {
            let dk = DataKey::generate().unwrap();
            let w = p.wrap(&dk).await.unwrap();
            let c = der_to_cipher("k", &w).unwrap();
            assert_eq!(c.ciphertext.len(), 16);
            assert_eq!(cipher_to_der(c).unwrap(), w);
        }
    }

    #[tokio::test]
    async fn untrusted_wrapped_keys_never_panic_and_are_invalid_input() {
        let (pem, _, _) = generate_pem().unwrap();
        let p = Sm2Provider::from_secret_key(parse_private_key_pem(&pem).unwrap(), None).unwrap();
        let w = p.wrap(&DataKey::generate().unwrap()).await.unwrap();
        for n in 0..w.len() {
            let e = der_to_cipher("k", &w[..n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        }
        for i in 0..w.len() {
            for bit in 0..8 {
                let mut t = w.clone();
                t[i] ^= 1 << bit;
                // Flips in C3 or C2 still parse (only the device can tell); none may panic.
                if let Err(e) = der_to_cipher("k", &t) {
                    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
                }
            }
        }
        let mut long = w.clone();
        long.push(0);
        assert!(der_to_cipher("k", &long).is_err(), "trailing byte accepted");
        // A well-formed SM2Cipher of another length never reaches the device.
        let (pem, _, _) = generate_pem().unwrap();
        let secret = parse_private_key_pem(&pem).unwrap();
        let enc =
            sm2::pke::EncryptingKey::new_with_mode(secret.public_key(), sm2::pke::Mode::C1C3C2);
        let w17 = enc.encrypt_der(&mut getrandom::SysRng, &[7u8; 17]).unwrap();
        let e = der_to_cipher("k", &w17).unwrap_err();
        assert!(e.to_string().contains("17 bytes, not 16"), "{e}");
    }
}
