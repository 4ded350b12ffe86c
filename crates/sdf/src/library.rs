//! Loading a vendor's SDF library and resolving, up front, every function this crate calls.

use std::ffi::c_void;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::SdfError;
use crate::profile::Profile;

/// An SDF device or session handle (`SGD_HANDLE`, `void *`).
pub(crate) type Handle = *mut c_void;

// The C signatures, as every profile declares them (`SGD_RV` = `unsigned int`, `SGD_UINT32` =
// `unsigned int`; GmSSL declares the return as `int`, the same register). Struct pointers are `void *`
// here because the struct behind them depends on the profile (see `layout`). The 2023 edition changes
// the *meaning* of `SDF_InternalDecrypt_ECC`'s third argument (key type instead of algorithm id), not
// its C type.

/// `SDF_OpenDevice(SGD_HANDLE *phDeviceHandle)`.
pub(crate) type OpenDeviceFn = unsafe extern "C" fn(*mut Handle) -> u32;
/// `SDF_CloseDevice(SGD_HANDLE hDeviceHandle)` and `SDF_CloseSession(SGD_HANDLE hSessionHandle)`.
pub(crate) type CloseFn = unsafe extern "C" fn(Handle) -> u32;
/// `SDF_OpenSession(SGD_HANDLE hDeviceHandle, SGD_HANDLE *phSessionHandle)`.
pub(crate) type OpenSessionFn = unsafe extern "C" fn(Handle, *mut Handle) -> u32;
/// `SDF_GetDeviceInfo(SGD_HANDLE hSessionHandle, DEVICEINFO *pstDeviceInfo)`.
pub(crate) type GetDeviceInfoFn = unsafe extern "C" fn(Handle, *mut c_void) -> u32;
/// `SDF_GenerateRandom(SGD_HANDLE hSessionHandle, SGD_UINT32 uiLength, SGD_UCHAR *pucRandom)`.
pub(crate) type GenerateRandomFn = unsafe extern "C" fn(Handle, u32, *mut u8) -> u32;
/// `SDF_GetPrivateKeyAccessRight(SGD_HANDLE, SGD_UINT32 uiKeyIndex, SGD_UCHAR *pucPassword,
/// SGD_UINT32 uiPwdLength)`.
pub(crate) type GetAccessRightFn = unsafe extern "C" fn(Handle, u32, *mut u8, u32) -> u32;
/// `SDF_ReleasePrivateKeyAccessRight(SGD_HANDLE, SGD_UINT32 uiKeyIndex)`.
pub(crate) type ReleaseAccessRightFn = unsafe extern "C" fn(Handle, u32) -> u32;
/// `SDF_ExportEncPublicKey_ECC(SGD_HANDLE, SGD_UINT32 uiKeyIndex, ECCrefPublicKey *pucPublicKey)`.
pub(crate) type ExportPublicKeyFn = unsafe extern "C" fn(Handle, u32, *mut c_void) -> u32;
/// `SDF_ExternalEncrypt_ECC(SGD_HANDLE, SGD_UINT32 uiAlgID, ECCrefPublicKey *pucPublicKey,
/// SGD_UCHAR *pucData, SGD_UINT32 uiDataLength, ECCCipher *pucEncData)`.
pub(crate) type ExternalEncryptFn =
    unsafe extern "C" fn(Handle, u32, *mut c_void, *mut u8, u32, *mut c_void) -> u32;
/// `SDF_InternalDecrypt_ECC(SGD_HANDLE, SGD_UINT32 uiISKIndex, SGD_UINT32 uiAlgID | uiECCKeyType,
/// ECCCipher *pucEncData, SGD_UCHAR *pucData, SGD_UINT32 *puiDataLength)`.
pub(crate) type InternalDecryptFn =
    unsafe extern "C" fn(Handle, u32, u32, *mut c_void, *mut u8, *mut u32) -> u32;

/// The resolved functions.
pub(crate) struct Functions {
    pub(crate) open_device: OpenDeviceFn,
    pub(crate) close_device: CloseFn,
    pub(crate) open_session: OpenSessionFn,
    pub(crate) close_session: CloseFn,
    pub(crate) get_device_info: GetDeviceInfoFn,
    pub(crate) generate_random: GenerateRandomFn,
    pub(crate) get_access_right: GetAccessRightFn,
    pub(crate) release_access_right: ReleaseAccessRightFn,
    pub(crate) export_enc_public_key: ExportPublicKeyFn,
    pub(crate) external_encrypt: ExternalEncryptFn,
    pub(crate) internal_decrypt: InternalDecryptFn,
}

/// The names of every function [`Library::load`] resolves.
pub const REQUIRED_SYMBOLS: [&str; 11] = [
    "SDF_OpenDevice",
    "SDF_CloseDevice",
    "SDF_OpenSession",
    "SDF_CloseSession",
    "SDF_GetDeviceInfo",
    "SDF_GenerateRandom",
    "SDF_GetPrivateKeyAccessRight",
    "SDF_ReleasePrivateKeyAccessRight",
    "SDF_ExportEncPublicKey_ECC",
    "SDF_ExternalEncrypt_ECC",
    "SDF_InternalDecrypt_ECC",
];

/// A loaded vendor SDF library and the profile it is spoken to in.
///
/// Shared (`Arc`) by every [`Device`](crate::Device) and [`Session`](crate::Session) opened from it,
/// so it is unloaded only after the last of them is closed.
pub struct Library {
    pub(crate) fns: Functions,
    profile: Profile,
    path: PathBuf,
    // Declared last: the function pointers above point into it.
    _lib: libloading::Library,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// `dlopen(path, RTLD_NOW | RTLD_LOCAL)`: every undefined symbol resolved at load (a broken vendor
/// library fails here, not in the middle of a call), nothing leaked into the global namespace.
///
/// # Safety
///
/// Loading runs the library's initialisers (and, at unload, its finalisers): the caller vouches
/// that `path` names a genuine SDF library.
#[cfg(unix)]
unsafe fn open(path: &Path) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: forwarded to the caller (see above).
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(libloading::Library::from)
}

/// # Safety
///
/// As for the unix variant.
#[cfg(not(unix))]
unsafe fn open(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: forwarded to the caller.
    unsafe { libloading::Library::new(path) }
}

/// Looks `name` up and copies the function pointer out; a missing or null symbol is an error naming
/// it.
///
/// # Safety
///
/// `T` must be the C type of the symbol `name` (a function pointer type from this module).
unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    path: &Path,
    name: &'static str,
) -> Result<T, SdfError> {
    // SAFETY: the caller guarantees `T` is the symbol's type; `Option<fn>` has the layout of a
    // nullable pointer, so a symbol whose address is null reads as `None` instead of an invalid
    // function pointer.
    let sym =
        unsafe { lib.get::<Option<T>>(name) }.map_err(|_| SdfError::missing_symbol(name, path))?;
    let sym = sym
        .lift_option()
        .ok_or_else(|| SdfError::missing_symbol(name, path))?;
    Ok(*sym)
}

impl Library {
    /// Loads the vendor library at `path` and resolves every function in [`REQUIRED_SYMBOLS`]; a
    /// library that cannot be loaded, or that lacks one of them, is an error of kind
    /// [`Library`](crate::ErrorKind::Library) naming it.
    ///
    /// Loading runs the library's initialisers: pass only the vendor SDF library the operator
    /// configured. The profile must match the library's headers; a wrong one shows up as
    /// [`BadResponse`](crate::ErrorKind::BadResponse) or [`NotSupported`](crate::ErrorKind::NotSupported)
    /// errors on the first calls (never as an out-of-bounds access: every buffer is larger than any
    /// profile's layout).
    pub fn load(path: &Path, profile: Profile) -> Result<Arc<Library>, SdfError> {
        // SAFETY: loading runs the vendor library's initialisers; that is the whole point of this
        // function and its documentation restricts it to the configured vendor library.
        let lib = unsafe { open(path) }.map_err(|e| SdfError::load(path, e))?;
        // SAFETY: in each `symbol` call below the type parameter is the C signature of that very
        // function, as declared above from the standard's headers.
        let fns = unsafe {
            Functions {
                open_device: symbol::<OpenDeviceFn>(&lib, path, "SDF_OpenDevice")?,
                close_device: symbol::<CloseFn>(&lib, path, "SDF_CloseDevice")?,
                open_session: symbol::<OpenSessionFn>(&lib, path, "SDF_OpenSession")?,
                close_session: symbol::<CloseFn>(&lib, path, "SDF_CloseSession")?,
                get_device_info: symbol::<GetDeviceInfoFn>(&lib, path, "SDF_GetDeviceInfo")?,
                generate_random: symbol::<GenerateRandomFn>(&lib, path, "SDF_GenerateRandom")?,
                get_access_right: symbol::<GetAccessRightFn>(
                    &lib,
                    path,
                    "SDF_GetPrivateKeyAccessRight",
                )?,
                release_access_right: symbol::<ReleaseAccessRightFn>(
                    &lib,
                    path,
                    "SDF_ReleasePrivateKeyAccessRight",
                )?,
                export_enc_public_key: symbol::<ExportPublicKeyFn>(
                    &lib,
                    path,
                    "SDF_ExportEncPublicKey_ECC",
                )?,
                external_encrypt: symbol::<ExternalEncryptFn>(
                    &lib,
                    path,
                    "SDF_ExternalEncrypt_ECC",
                )?,
                internal_decrypt: symbol::<InternalDecryptFn>(
                    &lib,
                    path,
                    "SDF_InternalDecrypt_ECC",
                )?,
            }
        };
        Ok(Arc::new(Library {
            fns,
            profile,
            path: path.to_owned(),
            _lib: lib,
        }))
    }

    /// The profile the library is spoken to in.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
