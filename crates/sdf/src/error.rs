//! Errors: a code an SDF function returned, or a fault this crate detected around the call. Messages
//! name the function and the code, never data.
//!
//! Standard codes (`SDR_*`, GM/T 0018 appendix A) as transcribed in `guanzhi/GmSSL` `src/sdf/sdf.h`
//! (`SDR_BASE` `0x01000000`, `+0x01` `SDR_UNKNOWERR` … `+0x1E` `SDR_OUTARGERR`); the vendor codes named
//! here (`SWR_*`) are Sansec's, from `livenowhy/sansec_test` `swsds.h`.

use std::fmt;
use std::path::Path;

/// Success.
pub const SDR_OK: u32 = 0;
/// Base of the standard error codes.
pub const SDR_BASE: u32 = 0x0100_0000;
/// Communication with the device failed.
pub const SDR_COMMFAIL: u32 = SDR_BASE + 0x03;
/// No private-key access right (also: key locked).
pub const SDR_PARDENY: u32 = SDR_BASE + 0x07;
/// The key does not exist.
pub const SDR_KEYNOTEXIST: u32 = SDR_BASE + 0x08;
/// Obtaining the private-key access right failed (wrong password).
pub const SDR_PRKRERR: u32 = SDR_BASE + 0x18;

/// The standard codes, `SDR_BASE + i` at index `i`.
const SDR_NAMES: [&str; 0x1F] = [
    "SDR_BASE",
    "SDR_UNKNOWERR",
    "SDR_NOTSUPPORT",
    "SDR_COMMFAIL",
    "SDR_HARDFAIL",
    "SDR_OPENDEVICE",
    "SDR_OPENSESSION",
    "SDR_PARDENY",
    "SDR_KEYNOTEXIST",
    "SDR_ALGNOTSUPPORT",
    "SDR_ALGMODNOTSUPPORT",
    "SDR_PKOPERR",
    "SDR_SKOPERR",
    "SDR_SIGNERR",
    "SDR_VERIFYERR",
    "SDR_SYMOPERR",
    "SDR_STEPERR",
    "SDR_FILESIZEERR",
    "SDR_FILENOEXIST",
    "SDR_FILEOFSERR",
    "SDR_KEYTYPEERR",
    "SDR_KEYERR",
    "SDR_ENCDATAERR",
    "SDR_RANDERR",
    "SDR_PRKRERR",
    "SDR_MACERR",
    "SDR_FILEEXISTS",
    "SDR_FILEWERR",
    "SDR_NOBUFFER",
    "SDR_INARGERR",
    "SDR_OUTARGERR",
];

/// Sansec vendor codes that matter for [`ErrorKind`].
const SANSEC_NAMES: [(u32, &str); 18] = [
    (0x0101_0100, "SWR_SOCKET_TIMEOUT"),
    (0x0101_0101, "SWR_CONNECT_ERR"),
    (0x0101_0102, "SWR_SET_SOCKOPT_ERR"),
    (0x0101_0104, "SWR_SOCKET_SEND_ERR"),
    (0x0101_0105, "SWR_SOCKET_RECV_ERR"),
    (0x0101_0106, "SWR_SOCKET_RECV_0"),
    (0x0101_0200, "SWR_SEM_TIMEOUT"),
    (0x0101_0201, "SWR_NO_AVAILABLE_HSM"),
    (0x0101_0202, "SWR_NO_AVAILABLE_CSM"),
    (0x0102_0002, "SWR_CARD_NOTSUPPORT"),
    (0x0102_0003, "SWR_CARD_COMMFAIL"),
    (0x0102_0004, "SWR_CARD_HARDFAIL"),
    (0x0102_0007, "SWR_CARD_PARDENY"),
    (0x0102_0008, "SWR_CARD_KEYNOTEXIST"),
    (0x0102_0009, "SWR_CARD_ALGNOTSUPPORT"),
    (0x0102_0012, "SWR_CARD_SKOPERR"),
    (0x0102_0101, "SWR_CARD_BUFFER_TOO_SMALL"),
    (0x0103_63CE, "SWR_CARD_READER_PIN_ERROR"),
];

/// The symbolic name of an SDF return code, if it is a standard or a known vendor code.
pub fn code_name(code: u32) -> Option<&'static str> {
    if code == SDR_OK {
        return Some("SDR_OK");
    }
    if let Some(i) = code.checked_sub(SDR_BASE)
        && let Some(name) = usize::try_from(i).ok().and_then(|i| SDR_NAMES.get(i))
    {
        return Some(name);
    }
    SANSEC_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
}

/// What kind of failure an [`SdfError`] is, for mapping to a caller's own errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device cannot be reached or does not answer: `SDR_COMMFAIL`, `SDR_HARDFAIL`,
    /// `SDR_OPENDEVICE`, `SDR_OPENSESSION`, Sansec socket, time-out and no-device codes. Retry later;
    /// a session that saw this should be closed and reopened.
    Communication,
    /// The access password was refused, the key is locked, or the session lacks the access right:
    /// `SDR_PARDENY`, `SDR_PRKRERR`, Sansec's card `PARDENY` and PIN error. Never retry in a loop:
    /// devices lock keys after a few wrong passwords.
    PermissionDenied,
    /// No key at that index: `SDR_KEYNOTEXIST`.
    KeyNotFound,
    /// The device refused to decrypt the ciphertext (wrong key, tampered data): `SDR_SKOPERR`,
    /// `SDR_ENCDATAERR`.
    Decrypt,
    /// Function, algorithm or mode not supported: `SDR_NOTSUPPORT`, `SDR_ALGNOTSUPPORT`,
    /// `SDR_ALGMODNOTSUPPORT` (often a wrong profile).
    NotSupported,
    /// The library reported success but its output cannot be right (a length beyond the buffer, a
    /// coordinate wider than 256 bits, a ciphertext of the wrong length). Often a wrong profile.
    BadResponse,
    /// The library could not be loaded or lacks a function.
    Library,
    /// The call was not made: the caller's input does not fit the profile (e.g. an empty or too long
    /// plaintext).
    InvalidInput,
    /// Any other code.
    Other,
}

impl ErrorKind {
    /// The kind of a code an SDF function returned.
    pub fn of_code(code: u32) -> ErrorKind {
        match code_name(code) {
            Some(
                "SDR_COMMFAIL"
                | "SDR_HARDFAIL"
                | "SDR_OPENDEVICE"
                | "SDR_OPENSESSION"
                | "SWR_SOCKET_TIMEOUT"
                | "SWR_CONNECT_ERR"
                | "SWR_SET_SOCKOPT_ERR"
                | "SWR_SOCKET_SEND_ERR"
                | "SWR_SOCKET_RECV_ERR"
                | "SWR_SOCKET_RECV_0"
                | "SWR_SEM_TIMEOUT"
                | "SWR_NO_AVAILABLE_HSM"
                | "SWR_NO_AVAILABLE_CSM"
                | "SWR_CARD_COMMFAIL"
                | "SWR_CARD_HARDFAIL",
            ) => ErrorKind::Communication,
            Some(
                "SDR_PARDENY" | "SDR_PRKRERR" | "SWR_CARD_PARDENY" | "SWR_CARD_READER_PIN_ERROR",
            ) => ErrorKind::PermissionDenied,
            Some("SDR_KEYNOTEXIST" | "SWR_CARD_KEYNOTEXIST") => ErrorKind::KeyNotFound,
            Some("SDR_SKOPERR" | "SDR_ENCDATAERR" | "SWR_CARD_SKOPERR") => ErrorKind::Decrypt,
            Some(
                "SDR_NOTSUPPORT"
                | "SDR_ALGNOTSUPPORT"
                | "SDR_ALGMODNOTSUPPORT"
                | "SWR_CARD_NOTSUPPORT"
                | "SWR_CARD_ALGNOTSUPPORT",
            ) => ErrorKind::NotSupported,
            _ => ErrorKind::Other,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cause {
    /// The function returned this non-zero code.
    Code(u32),
    /// dlopen failed (message from the loader: names the path, never data).
    Load(String),
    /// The library lacks the function.
    MissingSymbol(String),
    /// The function succeeded but returned something unusable.
    BadResponse(&'static str),
    /// The function was not called.
    InvalidInput(&'static str),
}

/// A failed SDF call: which function, and the code it returned or the fault detected around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdfError {
    function: &'static str,
    cause: Cause,
}

impl SdfError {
    /// `function` returned the non-zero `code`.
    pub fn code(function: &'static str, code: u32) -> SdfError {
        SdfError {
            function,
            cause: Cause::Code(code),
        }
    }

    pub(crate) fn load(path: &Path, message: impl fmt::Display) -> SdfError {
        SdfError {
            function: "dlopen",
            cause: Cause::Load(format!("{}: {message}", path.display())),
        }
    }

    pub(crate) fn missing_symbol(function: &'static str, path: &Path) -> SdfError {
        SdfError {
            function,
            cause: Cause::MissingSymbol(path.display().to_string()),
        }
    }

    pub(crate) fn bad_response(function: &'static str, what: &'static str) -> SdfError {
        SdfError {
            function,
            cause: Cause::BadResponse(what),
        }
    }

    pub(crate) fn invalid_input(function: &'static str, what: &'static str) -> SdfError {
        SdfError {
            function,
            cause: Cause::InvalidInput(what),
        }
    }

    /// The SDF function concerned (`dlopen` for a library that could not be loaded).
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// The code the function returned, if it returned one.
    pub fn return_code(&self) -> Option<u32> {
        match self.cause {
            Cause::Code(c) => Some(c),
            _ => None,
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self.cause {
            Cause::Code(c) => ErrorKind::of_code(c),
            Cause::Load(_) | Cause::MissingSymbol(_) => ErrorKind::Library,
            Cause::BadResponse(_) => ErrorKind::BadResponse,
            Cause::InvalidInput(_) => ErrorKind::InvalidInput,
        }
    }
}

impl fmt::Display for SdfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let function = self.function;
        match &self.cause {
            Cause::Code(code) => {
                let name = code_name(*code).unwrap_or("unknown code");
                write!(f, "{function} returned {code:#010x} ({name})")
            }
            Cause::Load(message) => write!(f, "cannot load the SDF library {message}"),
            Cause::MissingSymbol(path) => {
                write!(f, "the SDF library {path} does not export {function}")
            }
            Cause::BadResponse(what) => write!(f, "{function} returned an unusable result: {what}"),
            Cause::InvalidInput(what) => write!(f, "{function} not called: {what}"),
        }
    }
}

impl std::error::Error for SdfError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_standard_code() {
        assert_eq!(code_name(0), Some("SDR_OK"));
        assert_eq!(code_name(0x0100_0001), Some("SDR_UNKNOWERR"));
        assert_eq!(code_name(0x0100_0007), Some("SDR_PARDENY"));
        assert_eq!(code_name(0x0100_0008), Some("SDR_KEYNOTEXIST"));
        assert_eq!(code_name(0x0100_0016), Some("SDR_ENCDATAERR"));
        assert_eq!(code_name(0x0100_0018), Some("SDR_PRKRERR"));
        assert_eq!(code_name(0x0100_001E), Some("SDR_OUTARGERR"));
        assert_eq!(code_name(0x0100_001F), None);
        assert_eq!(code_name(0x0101_0201), Some("SWR_NO_AVAILABLE_HSM"));
        assert_eq!(code_name(1), None);
        assert_eq!(code_name(u32::MAX), None);
    }

    #[test]
    fn kinds() {
        let k = ErrorKind::of_code;
        assert_eq!(k(SDR_COMMFAIL), ErrorKind::Communication);
        assert_eq!(k(SDR_BASE + 4), ErrorKind::Communication);
        assert_eq!(k(SDR_BASE + 5), ErrorKind::Communication);
        assert_eq!(k(0x0101_0100), ErrorKind::Communication);
        assert_eq!(k(SDR_PARDENY), ErrorKind::PermissionDenied);
        assert_eq!(k(SDR_PRKRERR), ErrorKind::PermissionDenied);
        assert_eq!(k(SDR_KEYNOTEXIST), ErrorKind::KeyNotFound);
        assert_eq!(k(SDR_BASE + 0x0C), ErrorKind::Decrypt);
        assert_eq!(k(SDR_BASE + 0x16), ErrorKind::Decrypt);
        assert_eq!(k(SDR_BASE + 2), ErrorKind::NotSupported);
        assert_eq!(k(SDR_BASE + 9), ErrorKind::NotSupported);
        assert_eq!(k(SDR_BASE + 1), ErrorKind::Other);
        assert_eq!(k(SDR_BASE + 0x1D), ErrorKind::Other);
        assert_eq!(k(0xdead_beef), ErrorKind::Other);
    }

    #[test]
    fn display_names_function_code_and_name() {
        let e = SdfError::code("SDF_GetPrivateKeyAccessRight", SDR_PRKRERR);
        assert_eq!(
            e.to_string(),
            "SDF_GetPrivateKeyAccessRight returned 0x01000018 (SDR_PRKRERR)"
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(e.return_code(), Some(SDR_PRKRERR));
        let e = SdfError::code("SDF_OpenDevice", 0x0100_00ff);
        assert_eq!(
            e.to_string(),
            "SDF_OpenDevice returned 0x010000ff (unknown code)"
        );
        let e = SdfError::missing_symbol("SDF_InternalDecrypt_ECC", Path::new("/x/lib.so"));
        assert_eq!(e.kind(), ErrorKind::Library);
        assert!(e.to_string().contains("SDF_InternalDecrypt_ECC"));
        assert_eq!(e.return_code(), None);
        let e = SdfError::bad_response("SDF_InternalDecrypt_ECC", "length beyond the buffer");
        assert_eq!(e.kind(), ErrorKind::BadResponse);
        let e = SdfError::invalid_input("SDF_ExternalEncrypt_ECC", "empty plaintext");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.function(), "SDF_ExternalEncrypt_ECC");
    }
}
