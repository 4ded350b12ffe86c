//! Owning handles: [`Device`] (closed on drop) and [`Session`] (access rights released and session
//! closed on drop), and the calls the plugin makes.

use std::ffi::c_void;
use std::fmt;
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError};

use zeroize::Zeroizing;

use crate::error::{SDR_OK, SdfError};
use crate::layout::{
    RawDeviceInfo, SLACK, STD_C_CAPACITY, SansecCipher, SansecPublicKey, StdCipher, StdPublicKey,
    WithSlack,
};
use crate::library::{Handle, Library};
use crate::profile::Profile;
use crate::types::{DeviceInfo, EccCipher, EccPublicKey};

/// The most random bytes one [`Session::generate_random`] call asks for.
pub const MAX_RANDOM_LEN: usize = 64 * 1024;
/// The plaintext buffer handed to `SDF_InternalDecrypt_ECC`: larger than any ciphertext this crate
/// passes in.
const PLAIN_CAPACITY: usize = STD_C_CAPACITY + SLACK;

fn check(function: &'static str, rc: u32) -> Result<(), SdfError> {
    if rc == SDR_OK {
        Ok(())
    } else {
        Err(SdfError::code(function, rc))
    }
}

/// Owns the device handle. Shared (`Arc`) by the [`Device`] values and every open [`Session`], so
/// `SDF_CloseDevice` runs after the last session is closed.
struct DeviceInner {
    lib: Arc<Library>,
    handle: Handle,
    /// Serializes the calls made with the device handle (`SDF_OpenSession`, `SDF_CloseSession`).
    lock: Mutex<()>,
}

// SAFETY: `handle` is an opaque token that this struct owns (nothing else closes it). GM/T 0018 ties
// device and session handles to no thread (vendor libraries keep them in process-wide tables), and the
// only calls made with the device handle — SDF_OpenSession, and SDF_CloseSession — are serialized by
// `lock`; SDF_CloseDevice runs in `drop`, which has exclusive access. So moving the struct to another
// thread, or sharing `&DeviceInner` between threads, cannot make two calls on the device handle
// overlap.
unsafe impl Send for DeviceInner {}
// SAFETY: see the `Send` impl: every use of `handle` through `&DeviceInner` holds `lock`.
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // SAFETY: `handle` came from a successful SDF_OpenDevice of this library and is closed exactly
        // once, here; every session holds an `Arc` to this struct, so all of them are closed already.
        let _ = unsafe { (self.lib.fns.close_device)(self.handle) };
    }
}

/// An open device (`SDF_OpenDevice`), closed (`SDF_CloseDevice`) when the last clone and the last
/// session opened from it are dropped. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("library", &self.inner.lib)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// `SDF_OpenDevice`. The vendor library reads its own connection settings (device address, port,
    /// TLS) from its configuration file or environment.
    pub fn open(lib: Arc<Library>) -> Result<Device, SdfError> {
        let mut handle: Handle = ptr::null_mut();
        // SAFETY: `open_device` is the library's SDF_OpenDevice; it writes one handle through the valid,
        // exclusive pointer we pass.
        let rc = unsafe { (lib.fns.open_device)(&mut handle) };
        check("SDF_OpenDevice", rc)?;
        if handle.is_null() {
            return Err(SdfError::bad_response(
                "SDF_OpenDevice",
                "success without a device handle",
            ));
        }
        Ok(Device {
            inner: Arc::new(DeviceInner {
                lib,
                handle,
                lock: Mutex::new(()),
            }),
        })
    }

    /// `SDF_OpenSession`. Sessions may be opened from any thread (the calls are serialized).
    pub fn open_session(&self) -> Result<Session, SdfError> {
        let inner = &self.inner;
        let mut handle: Handle = ptr::null_mut();
        let rc = {
            let _guard = inner.lock.lock().unwrap_or_else(PoisonError::into_inner);
            // SAFETY: `inner.handle` is an open device of this library (closed only when `inner` is
            // dropped, which cannot happen while we hold `&self`); the out pointer is valid and
            // exclusive; device-handle calls are serialized by `lock`.
            unsafe { (inner.lib.fns.open_session)(inner.handle, &mut handle) }
        };
        check("SDF_OpenSession", rc)?;
        if handle.is_null() {
            return Err(SdfError::bad_response(
                "SDF_OpenSession",
                "success without a session handle",
            ));
        }
        Ok(Session {
            device: Arc::clone(inner),
            handle,
            rights: Vec::new(),
        })
    }

    /// `SDF_GetDeviceInfo` in a short-lived session of its own.
    pub fn info(&self) -> Result<DeviceInfo, SdfError> {
        self.open_session()?.device_info()
    }

    /// The library this device was opened from.
    pub fn library(&self) -> &Arc<Library> {
        &self.inner.lib
    }

    /// The library's profile.
    pub fn profile(&self) -> Profile {
        self.inner.lib.profile()
    }
}

/// An open session (`SDF_OpenSession`). On drop it releases every private-key access right it holds
/// (`SDF_ReleasePrivateKeyAccessRight`) and closes (`SDF_CloseSession`).
///
/// `Send` but not `Sync`, and every call takes `&mut self`: one thread at a time uses a session, which
/// is what GM/T 0018 devices expect. A session whose call failed with
/// [`ErrorKind::Communication`](crate::ErrorKind::Communication) should be dropped and a new one
/// opened.
pub struct Session {
    device: Arc<DeviceInner>,
    handle: Handle,
    /// Key indexes whose access right this session holds.
    rights: Vec<u32>,
}

// SAFETY: `handle` is an opaque token owned by this session (closed only in `drop`). GM/T 0018 session
// handles belong to no thread — vendor libraries look them up by value — so the session may move to
// another thread. It is not `Sync` (the raw pointer keeps the auto trait off) and every call takes
// `&mut self`, so two calls on one session never overlap.
unsafe impl Send for Session {}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("library", &self.device.lib)
            .field("access_rights", &self.rights)
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let fns = &self.device.lib.fns;
        for index in std::mem::take(&mut self.rights) {
            // SAFETY: the session handle is open (closed just below, once); plain integer arguments.
            let _ = unsafe { (fns.release_access_right)(self.handle, index) };
        }
        let _guard = self
            .device
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the session handle came from SDF_OpenSession on this device and is closed exactly
        // once, here; the device is still open (we hold an `Arc` to it); device-level calls are
        // serialized by its lock.
        let _ = unsafe { (fns.close_session)(self.handle) };
    }
}

impl Session {
    fn lib(&self) -> &Library {
        &self.device.lib
    }

    /// The library's profile.
    pub fn profile(&self) -> Profile {
        self.device.lib.profile()
    }

    /// `SDF_GetDeviceInfo`: issuer, device name, serial and capabilities.
    pub fn device_info(&mut self) -> Result<DeviceInfo, SdfError> {
        let mut raw = WithSlack::new(RawDeviceInfo::ZERO);
        let out: *mut WithSlack<RawDeviceInfo> = &mut *raw;
        // SAFETY: open session handle; `out` points to a writable DEVICEINFO (same in every profile)
        // followed by `SLACK` spare bytes, exclusively ours for the call.
        let rc = unsafe { (self.lib().fns.get_device_info)(self.handle, out.cast::<c_void>()) };
        check("SDF_GetDeviceInfo", rc)?;
        Ok(raw.value.to_info())
    }

    /// `SDF_GenerateRandom`: `len` bytes from the device's RNG (at most [`MAX_RANDOM_LEN`]; zero
    /// bytes need no call).
    pub fn generate_random(&mut self, len: usize) -> Result<Zeroizing<Vec<u8>>, SdfError> {
        const F: &str = "SDF_GenerateRandom";
        if len > MAX_RANDOM_LEN {
            return Err(SdfError::invalid_input(
                F,
                "more random bytes than one call may ask for",
            ));
        }
        if len == 0 {
            return Ok(Zeroizing::new(Vec::new()));
        }
        let n = u32::try_from(len).map_err(|_| SdfError::invalid_input(F, "length too large"))?;
        // Room for `len` bytes plus slack, in case the library writes more than it was asked for.
        let mut buf = Zeroizing::new(vec![0u8; len + SLACK]);
        // SAFETY: open session handle; `buf` is writable for `len + SLACK` ≥ `len` bytes, exclusively
        // ours for the call.
        let rc = unsafe { (self.lib().fns.generate_random)(self.handle, n, buf.as_mut_ptr()) };
        check(F, rc)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// `SDF_ExportEncPublicKey_ECC`: the public half of the internal SM2 encryption key pair at
    /// `index` (1-based, as the standard numbers them).
    pub fn export_enc_public_key(&mut self, index: u32) -> Result<EccPublicKey, SdfError> {
        const F: &str = "SDF_ExportEncPublicKey_ECC";
        let export = self.lib().fns.export_enc_public_key;
        let key = match self.profile() {
            Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => {
                let mut raw = WithSlack::new(StdPublicKey::ZERO);
                let out: *mut WithSlack<StdPublicKey> = &mut *raw;
                // SAFETY: open session handle; `out` points to a writable ECCrefPublicKey of this
                // profile's layout plus `SLACK` bytes, exclusively ours for the call.
                let rc = unsafe { export(self.handle, index, out.cast::<c_void>()) };
                check(F, rc)?;
                raw.value.to_key()
            }
            Profile::Sansec => {
                let mut raw = WithSlack::new(SansecPublicKey::ZERO);
                let out: *mut WithSlack<SansecPublicKey> = &mut *raw;
                // SAFETY: as above, with the Sansec layout.
                let rc = unsafe { export(self.handle, index, out.cast::<c_void>()) };
                check(F, rc)?;
                raw.value.to_key()
            }
        };
        key.map_err(|what| SdfError::bad_response(F, what))
    }

    /// `SDF_GetPrivateKeyAccessRight` for the key at `index` with its access password. On success the
    /// session holds the right until [`release_private_key_access_right`](Self::release_private_key_access_right)
    /// or drop. A refused password is an error of kind
    /// [`PermissionDenied`](crate::ErrorKind::PermissionDenied): do not retry it in a loop, devices
    /// lock keys after a few failures.
    pub fn get_private_key_access_right(
        &mut self,
        index: u32,
        password: &[u8],
    ) -> Result<(), SdfError> {
        const F: &str = "SDF_GetPrivateKeyAccessRight";
        let len = u32::try_from(password.len())
            .map_err(|_| SdfError::invalid_input(F, "password too long"))?;
        // A private, NUL-terminated copy (some libraries treat the password as a C string; the C
        // parameter is not `const`), wiped on drop.
        let mut copy = Zeroizing::new(Vec::with_capacity(password.len() + 1));
        copy.extend_from_slice(password);
        copy.push(0);
        // SAFETY: open session handle; `copy` is readable (and writable) for `len + 1` bytes and
        // exclusively ours for the call.
        let rc = unsafe {
            (self.lib().fns.get_access_right)(self.handle, index, copy.as_mut_ptr(), len)
        };
        check(F, rc)?;
        if !self.rights.contains(&index) {
            self.rights.push(index);
        }
        Ok(())
    }

    /// `SDF_ReleasePrivateKeyAccessRight`. The right counts as released even if the call fails.
    pub fn release_private_key_access_right(&mut self, index: u32) -> Result<(), SdfError> {
        self.rights.retain(|&i| i != index);
        // SAFETY: open session handle; plain integer arguments.
        let rc = unsafe { (self.lib().fns.release_access_right)(self.handle, index) };
        check("SDF_ReleasePrivateKeyAccessRight", rc)
    }

    /// Whether this session obtained, and has not released, the access right for `index`.
    pub fn has_private_key_access_right(&self, index: u32) -> bool {
        self.rights.contains(&index)
    }

    /// `SDF_ExternalEncrypt_ECC` with SM2 encryption (`SGD_SM2_3` of the profile): encrypts `data`
    /// (1 byte up to [`Profile::max_ciphertext_len`]) to `key` inside the device.
    pub fn external_encrypt(
        &mut self,
        key: &EccPublicKey,
        data: &[u8],
    ) -> Result<EccCipher, SdfError> {
        const F: &str = "SDF_ExternalEncrypt_ECC";
        let profile = self.profile();
        if data.is_empty() {
            return Err(SdfError::invalid_input(F, "empty plaintext"));
        }
        if data.len() > profile.max_ciphertext_len() {
            return Err(SdfError::invalid_input(
                F,
                "plaintext longer than the profile's ECCCipher can carry",
            ));
        }
        let len = u32::try_from(data.len()).map_err(|_| SdfError::invalid_input(F, "too long"))?;
        let mut plain = Zeroizing::new(data.to_vec());
        let encrypt = self.lib().fns.external_encrypt;
        let alg = profile.sm2_encrypt_alg_id();
        let cipher = match profile {
            Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => {
                let mut pk = WithSlack::new(StdPublicKey::from_key(key));
                let mut out = StdCipher::zeroed();
                let pk_ptr: *mut WithSlack<StdPublicKey> = &mut *pk;
                let out_ptr: *mut WithSlack<StdCipher> = &mut *out;
                // SAFETY: open session handle; `pk_ptr` is a valid ECCrefPublicKey of this layout,
                // `plain` holds `len` readable bytes, `out_ptr` is a writable ECCCipher with room for
                // `STD_C_CAPACITY` ≥ `len` bytes of C plus `SLACK`; all exclusively ours for the call.
                let rc = unsafe {
                    encrypt(
                        self.handle,
                        alg,
                        pk_ptr.cast::<c_void>(),
                        plain.as_mut_ptr(),
                        len,
                        out_ptr.cast::<c_void>(),
                    )
                };
                check(F, rc)?;
                out.value.to_cipher()
            }
            Profile::Sansec => {
                let mut pk = WithSlack::new(SansecPublicKey::from_key(key));
                let mut out = WithSlack::new(SansecCipher::ZERO);
                let pk_ptr: *mut WithSlack<SansecPublicKey> = &mut *pk;
                let out_ptr: *mut WithSlack<SansecCipher> = &mut *out;
                // SAFETY: as above, with the Sansec layouts (`len` ≤ 136 checked above).
                let rc = unsafe {
                    encrypt(
                        self.handle,
                        alg,
                        pk_ptr.cast::<c_void>(),
                        plain.as_mut_ptr(),
                        len,
                        out_ptr.cast::<c_void>(),
                    )
                };
                check(F, rc)?;
                out.value.to_cipher()
            }
        }
        .map_err(|what| SdfError::bad_response(F, what))?;
        if cipher.ciphertext.len() != data.len() {
            // SM2's C2 is exactly as long as the plaintext (GB/T 32918.4).
            return Err(SdfError::bad_response(
                F,
                "ciphertext length differs from the plaintext length",
            ));
        }
        Ok(cipher)
    }

    /// `SDF_InternalDecrypt_ECC` with the internal SM2 encryption key at `index`, which needs this
    /// session's access right for it. A ciphertext the device refuses is an error of kind
    /// [`Decrypt`](crate::ErrorKind::Decrypt); a plaintext whose length differs from the ciphertext's
    /// (impossible for SM2) is [`BadResponse`](crate::ErrorKind::BadResponse).
    pub fn internal_decrypt(
        &mut self,
        index: u32,
        cipher: &EccCipher,
    ) -> Result<Zeroizing<Vec<u8>>, SdfError> {
        const F: &str = "SDF_InternalDecrypt_ECC";
        let profile = self.profile();
        if cipher.ciphertext.is_empty() {
            return Err(SdfError::invalid_input(F, "empty ciphertext"));
        }
        let decrypt = self.lib().fns.internal_decrypt;
        let third = profile.internal_decrypt_third_arg();
        let mut plain = Zeroizing::new(vec![0u8; PLAIN_CAPACITY]);
        let capacity = u32::try_from(PLAIN_CAPACITY).unwrap_or(u32::MAX);
        let mut plain_len = capacity;
        let rc = match profile {
            Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => {
                let mut raw = StdCipher::from_cipher(cipher)
                    .map_err(|what| SdfError::invalid_input(F, what))?;
                let raw_ptr: *mut WithSlack<StdCipher> = &mut *raw;
                // SAFETY: open session handle; `raw_ptr` is a valid ECCCipher (head + L bytes of C)
                // of this layout, `plain` is writable for `plain_len` bytes, `plain_len` is a valid
                // in/out length; all exclusively ours for the call.
                unsafe {
                    decrypt(
                        self.handle,
                        index,
                        third,
                        raw_ptr.cast::<c_void>(),
                        plain.as_mut_ptr(),
                        &mut plain_len,
                    )
                }
            }
            Profile::Sansec => {
                let mut raw = WithSlack::new(
                    SansecCipher::from_cipher(cipher)
                        .map_err(|what| SdfError::invalid_input(F, what))?,
                );
                let raw_ptr: *mut WithSlack<SansecCipher> = &mut *raw;
                // SAFETY: as above, with the Sansec layout.
                unsafe {
                    decrypt(
                        self.handle,
                        index,
                        third,
                        raw_ptr.cast::<c_void>(),
                        plain.as_mut_ptr(),
                        &mut plain_len,
                    )
                }
            }
        };
        check(F, rc)?;
        if plain_len > capacity {
            return Err(SdfError::bad_response(
                F,
                "reported plaintext length exceeds the buffer",
            ));
        }
        let n = usize::try_from(plain_len).unwrap_or(usize::MAX);
        if n != cipher.ciphertext.len() {
            // SM2's plaintext is exactly as long as C2 (GB/T 32918.4).
            return Err(SdfError::bad_response(
                F,
                "plaintext length differs from the ciphertext length",
            ));
        }
        plain.truncate(n);
        Ok(plain)
    }
}
