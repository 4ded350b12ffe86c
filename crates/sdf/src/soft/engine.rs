//! The soft device's logic, in safe Rust: handle tables, key and password files, fault switches, the
//! call log, SM2. The C shims in the parent module only move bytes between C memory and these
//! functions.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sm2::pkcs8::DecodePrivateKey;
use sm2::pke::{DecryptingKey, EncryptingKey, Mode};
use sm2::{PublicKey, SecretKey};
use zeroize::Zeroizing;

use crate::error::{SDR_BASE, SDR_COMMFAIL, SDR_KEYNOTEXIST, SDR_PARDENY, SDR_PRKRERR};
use crate::profile::{Profile, SGD_SM2_1};
use crate::soft_names::{DEVICE_NAME, DIR_ENV, ISSUER, PROFILE_ENV, SERIAL};
use crate::types::{DeviceInfo, EccCipher, EccPublicKey};

/// The longest plaintext `SDF_ExternalEncrypt_ECC` accepts (`ECCref_MAX_CIPHER_LEN` of the headers).
pub(crate) const MAX_PLAINTEXT: usize = 136;
/// The longest `C` `SDF_InternalDecrypt_ECC` reads from a caller's standard `ECCCipher`.
pub(crate) const MAX_STD_C: usize = crate::layout::STD_C_CAPACITY;
/// Largest `SDF_GenerateRandom` request.
const MAX_RANDOM: usize = 1 << 20;
/// Wrong passwords before a key locks, unless `lockout-after` says otherwise.
const DEFAULT_LOCKOUT_AFTER: u32 = 3;

const SDR_ALGNOTSUPPORT: u32 = SDR_BASE + 0x09;
const SDR_SKOPERR: u32 = SDR_BASE + 0x0C;
const SDR_FILESIZEERR: u32 = SDR_BASE + 0x11;
const SDR_KEYERR: u32 = SDR_BASE + 0x15;
const SDR_ENCDATAERR: u32 = SDR_BASE + 0x16;
const SDR_RANDERR: u32 = SDR_BASE + 0x17;
const SDR_NOBUFFER: u32 = SDR_BASE + 0x1C;
const SDR_INARGERR: u32 = SDR_BASE + 0x1D;
/// Sansec `SWR_CARD_BUFFER_TOO_SMALL`.
const SWR_CARD_BUFFER_TOO_SMALL: u32 = 0x0102_0101;
/// `SDR_OPENDEVICE`: also what an unknown device handle gets.
pub(crate) const SDR_OPENDEVICE: u32 = SDR_BASE + 0x05;
/// `SDR_OPENSESSION`: also what an unknown session handle gets.
pub(crate) const SDR_OPENSESSION: u32 = SDR_BASE + 0x06;
/// `SDR_UNKNOWERR`: a panic caught at the C boundary.
pub(crate) const SDR_UNKNOWERR: u32 = SDR_BASE + 0x01;

/// One opened device: where its files are and which profile it speaks.
#[derive(Debug)]
pub(crate) struct Dev {
    dir: PathBuf,
    profile: Profile,
}

impl Dev {
    /// The device `SDF_OpenDevice` opens: `GM_SDF_SOFT_DIR` (required, an existing directory) and
    /// `GM_SDF_SOFT_PROFILE`.
    pub(crate) fn from_env() -> Result<Dev, u32> {
        let dir = std::env::var_os(DIR_ENV)
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .ok_or(SDR_OPENDEVICE)?;
        let profile = match std::env::var(PROFILE_ENV) {
            Ok(name) => name.parse().map_err(|_| SDR_OPENDEVICE)?,
            Err(std::env::VarError::NotPresent) => Profile::default(),
            Err(std::env::VarError::NotUnicode(_)) => return Err(SDR_OPENDEVICE),
        };
        Ok(Dev { dir, profile })
    }

    pub(crate) fn profile(&self) -> Profile {
        self.profile
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A length or argument the device refuses.
    pub(crate) fn bad_argument(&self) -> u32 {
        match self.profile {
            // Sansec's header has no SDR_INARGERR; its SDR_FILESIZEERR reads "file size error or
            // illegal input data length".
            Profile::Sansec => SDR_FILESIZEERR,
            _ => SDR_INARGERR,
        }
    }

    /// The caller's output buffer is too small.
    pub(crate) fn buffer_too_small(&self) -> u32 {
        match self.profile {
            Profile::Sansec => SWR_CARD_BUFFER_TOO_SMALL,
            _ => SDR_NOBUFFER,
        }
    }

    /// A wrong access password (the key is not locked yet).
    fn wrong_password(&self) -> u32 {
        match self.profile {
            // Sansec's header stops at SDR_KEYERR; it has no SDR_PRKRERR.
            Profile::Sansec => SDR_PARDENY,
            _ => SDR_PRKRERR,
        }
    }

    /// A ciphertext the private key cannot open.
    fn decrypt_failed(&self) -> u32 {
        match self.profile {
            Profile::Sansec => SDR_SKOPERR,
            _ => SDR_ENCDATAERR,
        }
    }

    /// Reads a small number from a switch file; `None` if absent or not a number.
    fn number_file(&self, name: &str) -> Option<u64> {
        fs::read_to_string(self.file(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn switch(&self, name: &str) -> bool {
        self.file(name).exists()
    }
}

struct SessionState {
    device: Arc<Dev>,
    rights: HashSet<u32>,
}

#[derive(Default)]
struct Registry {
    last: usize,
    devices: HashMap<usize, Arc<Dev>>,
    sessions: HashMap<usize, SessionState>,
}

impl Registry {
    /// A fresh non-zero id (handles are these ids, never pointers: a stale or forged handle finds
    /// nothing instead of pointing into freed memory).
    fn next_id(&mut self) -> usize {
        self.last = self.last.wrapping_add(1).max(1);
        self.last
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard: MutexGuard<'_, Option<Registry>> =
        REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Registry::default))
}

/// Registers an opened device, returning its handle id.
pub(crate) fn register_device(dev: Arc<Dev>) -> usize {
    with_registry(|r| {
        let id = r.next_id();
        r.devices.insert(id, dev);
        id
    })
}

/// The device behind a handle id.
pub(crate) fn device(id: usize) -> Option<Arc<Dev>> {
    with_registry(|r| r.devices.get(&id).cloned())
}

/// Forgets a device (and any session the caller left open on it).
pub(crate) fn close_device(id: usize) -> Option<Arc<Dev>> {
    with_registry(|r| {
        let dev = r.devices.remove(&id)?;
        r.sessions.retain(|_, s| !Arc::ptr_eq(&s.device, &dev));
        Some(dev)
    })
}

/// Opens a session on a registered device, returning its handle id.
pub(crate) fn open_session(device: &Arc<Dev>) -> usize {
    with_registry(|r| {
        let id = r.next_id();
        r.sessions.insert(
            id,
            SessionState {
                device: Arc::clone(device),
                rights: HashSet::new(),
            },
        );
        id
    })
}

/// The device of a session handle id.
pub(crate) fn session_device(id: usize) -> Option<Arc<Dev>> {
    with_registry(|r| r.sessions.get(&id).map(|s| Arc::clone(&s.device)))
}

/// Forgets a session (and the access rights it held).
pub(crate) fn close_session(id: usize) -> Option<Arc<Dev>> {
    with_registry(|r| r.sessions.remove(&id).map(|s| s.device))
}

fn set_right(session: usize, index: u32, held: bool) {
    with_registry(|r| {
        if let Some(s) = r.sessions.get_mut(&session) {
            if held {
                s.rights.insert(index);
            } else {
                s.rights.remove(&index);
            }
        }
    });
}

fn holds_right(session: usize, index: u32) -> bool {
    with_registry(|r| {
        r.sessions
            .get(&session)
            .is_some_and(|s| s.rights.contains(&index))
    })
}

/// Runs one exported call: the `fault-slow-ms` sleep, the `fault-commfail` switch (every call fails
/// with `SDR_COMMFAIL`, the body does not run), then the body, then one line in `calls.log`.
pub(crate) fn call(
    dev: &Dev,
    function: &str,
    index: Option<u32>,
    body: impl FnOnce() -> Result<(), u32>,
) -> u32 {
    if let Some(ms) = dev.number_file("fault-slow-ms") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let rc = if dev.switch("fault-commfail") {
        SDR_COMMFAIL
    } else {
        match body() {
            Ok(()) => 0,
            Err(rc) => rc,
        }
    };
    log(dev, function, index, rc);
    rc
}

/// Appends `<function> index=<i|-> rc=0x<8 hex digits>` to `<dir>/calls.log` (one `write` per line,
/// `O_APPEND`, so concurrent processes do not interleave lines).
fn log(dev: &Dev, function: &str, index: Option<u32>, rc: u32) {
    let index = index.map_or_else(|| "-".to_owned(), |i| i.to_string());
    let line = format!("{function} index={index} rc={rc:#010x}\n");
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dev.file("calls.log"))
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// `SDF_GetDeviceInfo`.
pub(crate) fn device_info(dev: &Dev) -> DeviceInfo {
    DeviceInfo {
        issuer: ISSUER.to_owned(),
        device_name: DEVICE_NAME.to_owned(),
        serial: SERIAL.to_owned(),
        device_version: 1,
        standard_version: match dev.profile {
            Profile::Gmt0018_2023 => 2,
            _ => 1,
        },
        asym_alg_ability: [SGD_SM2_1 | dev.profile.sm2_encrypt_alg_id(), 256],
        sym_alg_ability: 0,
        hash_alg_ability: 1, // SGD_SM3
        buffer_size: 0,
    }
}

/// `SDF_GenerateRandom`: bytes from the operating system.
pub(crate) fn random(dev: &Dev, len: u32) -> Result<Zeroizing<Vec<u8>>, u32> {
    let len = usize::try_from(len).map_err(|_| dev.bad_argument())?;
    if len > MAX_RANDOM {
        return Err(dev.bad_argument());
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    getrandom::fill(&mut buf).map_err(|_| SDR_RANDERR)?;
    Ok(buf)
}

/// The private key at `index` (`sm2-enc-<index>.pem`).
fn secret_key(dev: &Dev, index: u32) -> Result<SecretKey, u32> {
    let path = dev.file(&format!("sm2-enc-{index}.pem"));
    let pem = Zeroizing::new(fs::read_to_string(path).map_err(|_| SDR_KEYNOTEXIST)?);
    SecretKey::from_pkcs8_pem(&pem).map_err(|_| SDR_KEYERR)
}

fn public_of(secret: &SecretKey) -> Result<EccPublicKey, u32> {
    EccPublicKey::from_sec1_uncompressed(&secret.public_key().to_sec1_bytes()).ok_or(SDR_KEYERR)
}

/// `SDF_ExportEncPublicKey_ECC`.
pub(crate) fn export_public_key(dev: &Dev, index: u32) -> Result<EccPublicKey, u32> {
    public_of(&secret_key(dev, index)?)
}

/// `SDF_GetPrivateKeyAccessRight`: `locked-<index>` refuses everything with `SDR_PARDENY`; a key
/// without a `pin-<index>` file takes any password; a wrong password counts in `failures-<index>`
/// and the `lockout-after`-th (default 3; 0 = never) creates `locked-<index>`.
pub(crate) fn get_access_right(
    dev: &Dev,
    session: usize,
    index: u32,
    password: &[u8],
) -> Result<(), u32> {
    let locked = dev.file(&format!("locked-{index}"));
    if locked.exists() {
        return Err(SDR_PARDENY);
    }
    secret_key(dev, index)?;
    let failures = dev.file(&format!("failures-{index}"));
    let pin = match fs::read(dev.file(&format!("pin-{index}"))) {
        Ok(pin) => Some(Zeroizing::new(pin)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => return Err(SDR_KEYERR),
    };
    let accepted = match &pin {
        None => true,
        Some(pin) => strip_line_end(pin) == password,
    };
    if accepted {
        let _ = fs::remove_file(&failures);
        set_right(session, index, true);
        return Ok(());
    }
    let count = dev.number_file(&format!("failures-{index}")).unwrap_or(0) + 1;
    let limit = dev
        .number_file("lockout-after")
        .unwrap_or(u64::from(DEFAULT_LOCKOUT_AFTER));
    if limit != 0 && count >= limit {
        let _ = fs::write(&locked, b"locked after too many wrong passwords\n");
        let _ = fs::remove_file(&failures);
        return Err(SDR_PARDENY);
    }
    let _ = fs::write(&failures, format!("{count}\n"));
    Err(dev.wrong_password())
}

/// A password file's content without one trailing `\n` or `\r\n`.
fn strip_line_end(pin: &[u8]) -> &[u8] {
    let pin = pin.strip_suffix(b"\n").unwrap_or(pin);
    pin.strip_suffix(b"\r").unwrap_or(pin)
}

/// `SDF_ReleasePrivateKeyAccessRight` (succeeds whether or not the right was held).
pub(crate) fn release_access_right(session: usize, index: u32) {
    set_right(session, index, false);
}

/// `SDF_ExternalEncrypt_ECC` with SM2 (C1C3C2), randomness from the operating system.
pub(crate) fn external_encrypt(
    dev: &Dev,
    alg: u32,
    key: &EccPublicKey,
    data: &[u8],
) -> Result<EccCipher, u32> {
    if alg != dev.profile.sm2_encrypt_alg_id() {
        return Err(SDR_ALGNOTSUPPORT);
    }
    if data.is_empty() || data.len() > MAX_PLAINTEXT {
        return Err(dev.bad_argument());
    }
    let public =
        PublicKey::from_sec1_bytes(&key.to_sec1_uncompressed()).map_err(|_| dev.bad_argument())?;
    let bytes = EncryptingKey::new_with_mode(public, Mode::C1C3C2)
        .encrypt(&mut getrandom::SysRng, data)
        .map_err(|_| SDR_RANDERR)?;
    // 04 || x || y || C3 (32) || C2
    let (c1, rest) = bytes.split_at_checked(65).ok_or(SDR_UNKNOWERR)?;
    let (c3, c2) = rest.split_at_checked(32).ok_or(SDR_UNKNOWERR)?;
    let c1 = EccPublicKey::from_sec1_uncompressed(c1).ok_or(SDR_UNKNOWERR)?;
    Ok(EccCipher {
        x: c1.x,
        y: c1.y,
        hash: c3.try_into().map_err(|_| SDR_UNKNOWERR)?,
        ciphertext: c2.to_vec(),
    })
}

/// `SDF_InternalDecrypt_ECC`: needs the session's access right for `index`; `third` must select SM2
/// encryption (the algorithm id in 2012 and Sansec, the key type in 2023 — the same value).
/// `fault-badlen` makes a successful decryption return one byte too few (or one too many for a
/// one-byte plaintext).
pub(crate) fn internal_decrypt(
    dev: &Dev,
    session: usize,
    index: u32,
    third: u32,
    cipher: &EccCipher,
) -> Result<Zeroizing<Vec<u8>>, u32> {
    if third != dev.profile.internal_decrypt_third_arg() {
        return Err(SDR_ALGNOTSUPPORT);
    }
    if !holds_right(session, index) {
        return Err(SDR_PARDENY);
    }
    let secret = secret_key(dev, index)?;
    let mut bytes = Vec::with_capacity(65 + 32 + cipher.ciphertext.len());
    bytes.extend_from_slice(
        &EccPublicKey {
            x: cipher.x,
            y: cipher.y,
        }
        .to_sec1_uncompressed(),
    );
    bytes.extend_from_slice(&cipher.hash);
    bytes.extend_from_slice(&cipher.ciphertext);
    let mut plain = Zeroizing::new(
        DecryptingKey::new_with_mode(secret.to_nonzero_scalar(), Mode::C1C3C2)
            .decrypt(&bytes)
            .map_err(|_| dev.decrypt_failed())?,
    );
    if dev.switch("fault-badlen") {
        if plain.len() > 1 {
            plain.pop();
        } else {
            plain.push(0);
        }
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(profile: Profile) -> (tempfile::TempDir, Dev) {
        let tmp = tempfile::tempdir().unwrap();
        let dev = Dev {
            dir: tmp.path().to_owned(),
            profile,
        };
        (tmp, dev)
    }

    #[test]
    fn call_logs_and_honours_commfail() {
        let (_tmp, d) = dev(Profile::Gmt0018_2012);
        assert_eq!(call(&d, "SDF_X", Some(3), || Ok(())), 0);
        assert_eq!(call(&d, "SDF_Y", None, || Err(SDR_PARDENY)), SDR_PARDENY);
        fs::write(d.dir.join("fault-commfail"), "").unwrap();
        let mut ran = false;
        let rc = call(&d, "SDF_Z", None, || {
            ran = true;
            Ok(())
        });
        assert_eq!(rc, SDR_COMMFAIL);
        assert!(!ran);
        let log = fs::read_to_string(d.dir.join("calls.log")).unwrap();
        assert_eq!(
            log,
            "SDF_X index=3 rc=0x00000000\nSDF_Y index=- rc=0x01000007\nSDF_Z index=- rc=0x01000003\n"
        );
    }

    #[test]
    fn pin_file_line_end() {
        assert_eq!(strip_line_end(b"1234\n"), b"1234");
        assert_eq!(strip_line_end(b"1234\r\n"), b"1234");
        assert_eq!(strip_line_end(b"1234"), b"1234");
        assert_eq!(strip_line_end(b"12 34\n\n"), b"12 34\n");
    }

    #[test]
    fn unknown_handles_find_nothing() {
        assert!(device(usize::MAX).is_none());
        assert!(session_device(usize::MAX).is_none());
        assert!(close_session(usize::MAX).is_none());
        assert!(close_device(usize::MAX).is_none());
    }
}
