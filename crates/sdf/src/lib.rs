//! A safe Rust API over a vendor's GM/T 0018 ("SDF") cipher-machine library, loaded at run time.
//!
//! This is the workspace's only crate with `unsafe` code; everything else (the plugin's `sdf`
//! provider) uses the safe API below.
//!
//! ```no_run
//! use std::path::Path;
//! use gm_sdf::{Device, Library, Profile};
//!
//! # fn main() -> Result<(), gm_sdf::SdfError> {
//! let lib = Library::load(Path::new("/opt/vendor/lib/libsdf.so"), Profile::Gmt0018_2012)?;
//! let device = Device::open(lib)?;
//! println!("{:?}", device.info()?);
//! let mut session = device.open_session()?;
//! let public = session.export_enc_public_key(1)?;
//! let dk = session.generate_random(16)?;
//! let wrapped = session.external_encrypt(&public, &dk)?;
//! session.get_private_key_access_right(1, b"the key's access password")?;
//! let unwrapped = session.internal_decrypt(1, &wrapped)?;
//! assert_eq!(*unwrapped, *dk);
//! # Ok(())
//! # }
//! ```
//!
//! - [`Library::load`] `dlopen`s the library and resolves every function it will call (a missing one
//!   is an error naming it); the [`Profile`] says which vendor dialect of the C structs, algorithm ids
//!   and `SDF_InternalDecrypt_ECC` arguments to use (sources in [`profile`]'s documentation).
//! - [`Device`] (`SDF_OpenDevice`/`SDF_CloseDevice`) is `Send + Sync` and cheap to clone;
//!   [`Session`] (`SDF_OpenSession`/`SDF_CloseSession`) is `Send`, used by one thread at a time
//!   (`&mut self`), and releases its private-key access rights when dropped.
//! - Every output buffer is larger than any profile's layout needs, every length the library reports
//!   is checked before a copy, and nothing the library returns can make this crate panic: a value
//!   that cannot be right is an [`SdfError`] of kind [`ErrorKind::BadResponse`].
//! - Errors name the function and the code (hex and `SDR_*` name), never data.
//!
//! Features: `soft-device` (the test-only software device, [`soft`], exported with the C ABI for the
//! `gm-sdf-soft` cdylib) and `locate-soft-device` ([`locate::soft_device_library`], for tests).

#![deny(unsafe_op_in_unsafe_fn)]

mod device;
mod error;
mod layout;
mod library;
pub mod profile;
mod types;

#[cfg(feature = "locate-soft-device")]
pub mod locate;
#[cfg(feature = "soft-device")]
pub mod soft;
#[cfg(any(feature = "soft-device", feature = "locate-soft-device"))]
mod soft_names;

pub use device::{Device, MAX_RANDOM_LEN, Session};
pub use error::{
    ErrorKind, SDR_BASE, SDR_COMMFAIL, SDR_KEYNOTEXIST, SDR_OK, SDR_PARDENY, SDR_PRKRERR, SdfError,
    code_name,
};
pub use library::{Library, REQUIRED_SYMBOLS};
pub use profile::{ParseProfileError, Profile};
pub use types::{DeviceInfo, EccCipher, EccPublicKey};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn thread_bounds() {
        assert_send_sync::<Library>();
        assert_send_sync::<Device>();
        assert_send::<Session>();
        assert_send_sync::<SdfError>();
    }

    #[test]
    fn load_errors_name_the_path_or_the_symbol() {
        let err = Library::load(
            std::path::Path::new("/nonexistent/libsdf.so"),
            Profile::Sansec,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Library);
        assert!(err.to_string().contains("/nonexistent/libsdf.so"), "{err}");
        // A real shared library without the SDF functions.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
            "/usr/lib/libc.so.6",
        ]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists());
        if let Some(libc) = libc {
            let err = Library::load(libc, Profile::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Library);
            assert_eq!(err.function(), "SDF_OpenDevice");
            assert!(
                err.to_string().contains("does not export SDF_OpenDevice"),
                "{err}"
            );
        }
    }
}
