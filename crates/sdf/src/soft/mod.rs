//! The software SDF device (feature `soft-device`; test-only, never shipped).
//!
//! The functions below are exported with the C ABI under the standard names; the `gm-sdf-soft`
//! crate links them into a `cdylib` that tests load exactly as they would load a vendor's library.
//! They are thin shims: they check pointers, copy bytes between C memory and the profile's structs
//! (the same declarations the client side uses, see `layout`), and hand over to the safe logic in
//! `engine`.
//!
//! Behaviour:
//!
//! - `SDF_OpenDevice` reads [`GM_SDF_SOFT_DIR`](DIR_ENV) (the key directory, required) and
//!   [`GM_SDF_SOFT_PROFILE`](PROFILE_ENV) (`gmt0018-2012` default, `gmt0018-2023`, `sansec`); the
//!   device keeps both until closed. Handles are small integers, never pointers.
//! - Key pairs: `sm2-enc-<index>.pem`, PKCS#8 PEM as `openssl genpkey -algorithm SM2` writes it, read
//!   on every use. Access passwords: `pin-<index>` (one trailing newline ignored); without one, any
//!   password is accepted.
//! - `SDF_InternalDecrypt_ECC` needs the access right obtained in the same session.
//! - Every exported call appends `<function> index=<i|-> rc=0x<code>` to `<dir>/calls.log`.
//! - Fault switches, read on every call: `fault-commfail` (every call returns `SDR_COMMFAIL`),
//!   `fault-slow-ms` (sleep that many milliseconds first), `fault-badlen` (decryption returns a
//!   plaintext one byte short), `lockout-after` (wrong passwords before `locked-<index>` is created;
//!   default 3, 0 = never). While `locked-<index>` exists every access-right call for that key fails
//!   with `SDR_PARDENY`; a wrong password before that fails with `SDR_PRKRERR` (Sansec: `SDR_PARDENY`).

#![allow(non_snake_case)] // the standard's C names

mod engine;

use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::slice;

use crate::layout::{RawDeviceInfo, SansecCipher, SansecPublicKey, StdCipherHead, StdPublicKey};
use crate::library::{
    CloseFn, ExportPublicKeyFn, ExternalEncryptFn, GenerateRandomFn, GetAccessRightFn,
    GetDeviceInfoFn, Handle, InternalDecryptFn, OpenDeviceFn, OpenSessionFn, ReleaseAccessRightFn,
};
use crate::profile::Profile;
use crate::types::{EccCipher, EccPublicKey};

pub use crate::soft_names::{DEVICE_NAME, DIR_ENV, ISSUER, PROFILE_ENV, SERIAL};

use engine::{Dev, SDR_OPENDEVICE, SDR_OPENSESSION, SDR_UNKNOWERR};

// The exports have exactly the signatures the client side calls.
const _: OpenDeviceFn = SDF_OpenDevice;
const _: CloseFn = SDF_CloseDevice;
const _: OpenSessionFn = SDF_OpenSession;
const _: CloseFn = SDF_CloseSession;
const _: GetDeviceInfoFn = SDF_GetDeviceInfo;
const _: GenerateRandomFn = SDF_GenerateRandom;
const _: GetAccessRightFn = SDF_GetPrivateKeyAccessRight;
const _: ReleaseAccessRightFn = SDF_ReleasePrivateKeyAccessRight;
const _: ExportPublicKeyFn = SDF_ExportEncPublicKey_ECC;
const _: ExternalEncryptFn = SDF_ExternalEncrypt_ECC;
const _: InternalDecryptFn = SDF_InternalDecrypt_ECC;

/// Runs a shim body; a panic becomes `SDR_UNKNOWERR` instead of unwinding into C.
fn guarded(body: impl FnOnce() -> u32) -> u32 {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(SDR_UNKNOWERR)
}

fn handle_id(h: Handle) -> usize {
    h.addr()
}

fn id_handle(id: usize) -> Handle {
    ptr::without_provenance_mut(id)
}

/// `SDF_OpenDevice`: opens the device described by the environment (see the module docs).
///
/// # Safety
///
/// `ph_device` must be null or valid for writing one handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_OpenDevice(ph_device: *mut Handle) -> u32 {
    guarded(|| {
        let dev = match Dev::from_env() {
            Ok(dev) => std::sync::Arc::new(dev),
            Err(rc) => return rc,
        };
        engine::call(&dev, "SDF_OpenDevice", None, || {
            if ph_device.is_null() {
                return Err(dev.bad_argument());
            }
            let id = engine::register_device(std::sync::Arc::clone(&dev));
            // SAFETY: non-null, and the caller passes a pointer valid for writing one handle.
            unsafe { ph_device.write_unaligned(id_handle(id)) };
            Ok(())
        })
    })
}

/// `SDF_CloseDevice` (also forgets sessions left open on it).
///
/// # Safety
///
/// None beyond the C contract: the handle is only compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_CloseDevice(h_device: Handle) -> u32 {
    guarded(|| match engine::close_device(handle_id(h_device)) {
        Some(dev) => engine::call(&dev, "SDF_CloseDevice", None, || Ok(())),
        None => SDR_OPENDEVICE,
    })
}

/// `SDF_OpenSession`.
///
/// # Safety
///
/// `ph_session` must be null or valid for writing one handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_OpenSession(h_device: Handle, ph_session: *mut Handle) -> u32 {
    guarded(|| {
        let Some(dev) = engine::device(handle_id(h_device)) else {
            return SDR_OPENDEVICE;
        };
        engine::call(&dev, "SDF_OpenSession", None, || {
            if ph_session.is_null() {
                return Err(dev.bad_argument());
            }
            let id = engine::open_session(&dev);
            // SAFETY: non-null, and the caller passes a pointer valid for writing one handle.
            unsafe { ph_session.write_unaligned(id_handle(id)) };
            Ok(())
        })
    })
}

/// `SDF_CloseSession` (its access rights go with it).
///
/// # Safety
///
/// None beyond the C contract: the handle is only compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_CloseSession(h_session: Handle) -> u32 {
    guarded(|| match engine::close_session(handle_id(h_session)) {
        Some(dev) => engine::call(&dev, "SDF_CloseSession", None, || Ok(())),
        None => SDR_OPENSESSION,
    })
}

/// `SDF_GetDeviceInfo`.
///
/// # Safety
///
/// `info` must be null or valid for writing a `DEVICEINFO` (100 bytes).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_GetDeviceInfo(h_session: Handle, info: *mut c_void) -> u32 {
    guarded(|| {
        let Some(dev) = engine::session_device(handle_id(h_session)) else {
            return SDR_OPENSESSION;
        };
        engine::call(&dev, "SDF_GetDeviceInfo", None, || {
            if info.is_null() {
                return Err(dev.bad_argument());
            }
            let raw = RawDeviceInfo::from_info(&engine::device_info(&dev));
            // SAFETY: non-null, and the caller passes a pointer valid for writing a DEVICEINFO.
            unsafe { info.cast::<RawDeviceInfo>().write_unaligned(raw) };
            Ok(())
        })
    })
}

/// `SDF_GenerateRandom`: `length` bytes from the operating system's generator.
///
/// # Safety
///
/// `random` must be null or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_GenerateRandom(
    h_session: Handle,
    length: u32,
    random: *mut u8,
) -> u32 {
    guarded(|| {
        let Some(dev) = engine::session_device(handle_id(h_session)) else {
            return SDR_OPENSESSION;
        };
        engine::call(&dev, "SDF_GenerateRandom", None, || {
            if random.is_null() {
                return Err(dev.bad_argument());
            }
            let bytes = engine::random(&dev, length)?;
            // SAFETY: `bytes.len() == length`, and the caller passes a pointer valid for writing
            // `length` bytes that does not overlap our fresh buffer.
            unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), random, bytes.len()) };
            Ok(())
        })
    })
}

/// `SDF_GetPrivateKeyAccessRight` (see the module docs for passwords and lockout).
///
/// # Safety
///
/// `password` must be valid for reading `password_len` bytes (it may be null when the length is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_GetPrivateKeyAccessRight(
    h_session: Handle,
    index: u32,
    password: *mut u8,
    password_len: u32,
) -> u32 {
    guarded(|| {
        let session = handle_id(h_session);
        let Some(dev) = engine::session_device(session) else {
            return SDR_OPENSESSION;
        };
        engine::call(&dev, "SDF_GetPrivateKeyAccessRight", Some(index), || {
            let len = usize::try_from(password_len).map_err(|_| dev.bad_argument())?;
            let password: &[u8] = if len == 0 {
                &[]
            } else if password.is_null() || len > 4096 {
                return Err(dev.bad_argument());
            } else {
                // SAFETY: non-null, and the caller passes `password_len` readable bytes that stay
                // unchanged for the duration of the call.
                unsafe { slice::from_raw_parts(password, len) }
            };
            engine::get_access_right(&dev, session, index, password)
        })
    })
}

/// `SDF_ReleasePrivateKeyAccessRight`.
///
/// # Safety
///
/// None beyond the C contract: the handle is only compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_ReleasePrivateKeyAccessRight(h_session: Handle, index: u32) -> u32 {
    guarded(|| {
        let session = handle_id(h_session);
        let Some(dev) = engine::session_device(session) else {
            return SDR_OPENSESSION;
        };
        engine::call(
            &dev,
            "SDF_ReleasePrivateKeyAccessRight",
            Some(index),
            || {
                engine::release_access_right(session, index);
                Ok(())
            },
        )
    })
}

/// `SDF_ExportEncPublicKey_ECC`, in the device's profile layout.
///
/// # Safety
///
/// `public_key` must be null or valid for writing the profile's `ECCrefPublicKey`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_ExportEncPublicKey_ECC(
    h_session: Handle,
    index: u32,
    public_key: *mut c_void,
) -> u32 {
    guarded(|| {
        let Some(dev) = engine::session_device(handle_id(h_session)) else {
            return SDR_OPENSESSION;
        };
        engine::call(&dev, "SDF_ExportEncPublicKey_ECC", Some(index), || {
            if public_key.is_null() {
                return Err(dev.bad_argument());
            }
            let key = engine::export_public_key(&dev, index)?;
            match dev.profile() {
                Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => {
                    let raw = StdPublicKey::from_key(&key);
                    // SAFETY: non-null, and the caller passes room for this profile's struct.
                    unsafe { public_key.cast::<StdPublicKey>().write_unaligned(raw) };
                }
                Profile::Sansec => {
                    let raw = SansecPublicKey::from_key(&key);
                    // SAFETY: non-null, and the caller passes room for this profile's struct.
                    unsafe { public_key.cast::<SansecPublicKey>().write_unaligned(raw) };
                }
            }
            Ok(())
        })
    })
}

/// Reads the caller's `ECCrefPublicKey`.
///
/// # Safety
///
/// `p` must be valid for reading the profile's `ECCrefPublicKey`.
unsafe fn read_public_key(dev: &Dev, p: *const c_void) -> Result<EccPublicKey, u32> {
    match dev.profile() {
        Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => {
            // SAFETY: forwarded from the caller.
            unsafe { p.cast::<StdPublicKey>().read_unaligned() }.to_key()
        }
        Profile::Sansec => {
            // SAFETY: forwarded from the caller.
            unsafe { p.cast::<SansecPublicKey>().read_unaligned() }.to_key()
        }
    }
    .map_err(|_| dev.bad_argument())
}

/// Reads the caller's `ECCCipher` (the standard's head plus `C[L]`, or Sansec's fixed struct).
///
/// # Safety
///
/// `p` must be valid for reading the profile's `ECCCipher`, including `L` bytes of `C` for the
/// standard layout.
unsafe fn read_cipher(dev: &Dev, p: *const c_void) -> Result<EccCipher, u32> {
    match dev.profile() {
        Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => {
            // SAFETY: forwarded from the caller.
            let head = unsafe { p.cast::<StdCipherHead>().read_unaligned() };
            let len = head.len();
            if len == 0 || len > engine::MAX_STD_C {
                return Err(dev.bad_argument());
            }
            // SAFETY: forwarded from the caller: `C[L]` follows the head, and `L` is bounded above.
            let c = unsafe {
                slice::from_raw_parts(p.cast::<u8>().add(size_of::<StdCipherHead>()), len)
            };
            head.to_cipher(c).map_err(|_| dev.bad_argument())
        }
        Profile::Sansec => {
            // SAFETY: forwarded from the caller.
            let raw = unsafe { p.cast::<SansecCipher>().read_unaligned() };
            match raw.to_cipher() {
                Ok(c) if !c.ciphertext.is_empty() => Ok(c),
                _ => Err(dev.bad_argument()),
            }
        }
    }
}

/// Writes `cipher` as the profile's `ECCCipher`.
///
/// # Safety
///
/// `p` must be valid for writing the profile's `ECCCipher` with `C` as long as `cipher.ciphertext`.
unsafe fn write_cipher(dev: &Dev, p: *mut c_void, cipher: &EccCipher) -> Result<(), u32> {
    match dev.profile() {
        Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => {
            let head = StdCipherHead::from_cipher(cipher).ok_or(dev.bad_argument())?;
            // SAFETY: forwarded from the caller: room for the head, then `C[L]`.
            unsafe {
                p.cast::<StdCipherHead>().write_unaligned(head);
                ptr::copy_nonoverlapping(
                    cipher.ciphertext.as_ptr(),
                    p.cast::<u8>().add(size_of::<StdCipherHead>()),
                    cipher.ciphertext.len(),
                );
            }
        }
        Profile::Sansec => {
            let raw = SansecCipher::from_cipher(cipher).map_err(|_| dev.bad_argument())?;
            // SAFETY: forwarded from the caller.
            unsafe { p.cast::<SansecCipher>().write_unaligned(raw) };
        }
    }
    Ok(())
}

/// `SDF_ExternalEncrypt_ECC`: SM2 encryption to the given public key.
///
/// # Safety
///
/// `public_key` must be valid for reading the profile's `ECCrefPublicKey`, `data` for reading
/// `data_len` bytes, and `cipher` for writing the profile's `ECCCipher` with `data_len` bytes of `C`
/// (any of them may be null: refused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_ExternalEncrypt_ECC(
    h_session: Handle,
    alg_id: u32,
    public_key: *mut c_void,
    data: *mut u8,
    data_len: u32,
    cipher: *mut c_void,
) -> u32 {
    guarded(|| {
        let Some(dev) = engine::session_device(handle_id(h_session)) else {
            return SDR_OPENSESSION;
        };
        engine::call(&dev, "SDF_ExternalEncrypt_ECC", None, || {
            let len = usize::try_from(data_len).map_err(|_| dev.bad_argument())?;
            if public_key.is_null() || data.is_null() || cipher.is_null() {
                return Err(dev.bad_argument());
            }
            if len == 0 || len > engine::MAX_PLAINTEXT {
                return Err(dev.bad_argument());
            }
            // SAFETY: non-null; the caller passes a readable public key of this profile.
            let key = unsafe { read_public_key(&dev, public_key) }?;
            // SAFETY: non-null; the caller passes `data_len` readable bytes (bounded above).
            let data = unsafe { slice::from_raw_parts(data, len) };
            let out = engine::external_encrypt(&dev, alg_id, &key, data)?;
            // SAFETY: non-null; the caller passes room for the ECCCipher of a `data_len`-byte
            // plaintext, and `out.ciphertext.len() == data_len`.
            unsafe { write_cipher(&dev, cipher, &out) }
        })
    })
}

/// `SDF_InternalDecrypt_ECC`: SM2 decryption with the internal key at `index`, which needs the
/// session's access right. The third argument is the algorithm id (2012, Sansec) or the key type
/// (2023); both must select SM2 encryption.
///
/// # Safety
///
/// `cipher` must be valid for reading the profile's `ECCCipher` (with `C[L]`), `data_len` for reading
/// and writing one `u32` (in: the room at `data`), `data` for writing that many bytes (any of them may
/// be null: refused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SDF_InternalDecrypt_ECC(
    h_session: Handle,
    index: u32,
    alg_or_key_type: u32,
    cipher: *mut c_void,
    data: *mut u8,
    data_len: *mut u32,
) -> u32 {
    guarded(|| {
        let session = handle_id(h_session);
        let Some(dev) = engine::session_device(session) else {
            return SDR_OPENSESSION;
        };
        engine::call(&dev, "SDF_InternalDecrypt_ECC", Some(index), || {
            if cipher.is_null() || data.is_null() || data_len.is_null() {
                return Err(dev.bad_argument());
            }
            // SAFETY: non-null; the caller passes a readable ECCCipher of this profile.
            let input = unsafe { read_cipher(&dev, cipher) }?;
            // SAFETY: non-null; the caller passes a readable and writable length.
            let room = unsafe { data_len.read_unaligned() };
            let plain = engine::internal_decrypt(&dev, session, index, alg_or_key_type, &input)?;
            let n = u32::try_from(plain.len()).map_err(|_| dev.bad_argument())?;
            if n > room {
                return Err(dev.buffer_too_small());
            }
            // SAFETY: non-null; the caller said `data` has room for `room` ≥ `n` bytes; our buffer
            // does not overlap it; the length pointer is writable.
            unsafe {
                ptr::copy_nonoverlapping(plain.as_ptr(), data, plain.len());
                data_len.write_unaligned(n);
            }
            Ok(())
        })
    })
}
