//! Errors, at the bottom of the layers so every layer can use them and none has to look up.
//!
//! - [`ErrorKind`] is what a failure means for the caller. The gRPC edge maps kinds to status codes once
//!   (DESIGN §6) and metrics label provider calls with them; neither needs to know which back-end failed.
//! - [`ProviderError`] is what a key provider reports: a kind, a message, and the underlying cause when
//!   there is one ([`std::error::Error::source`]).
//! - [`Error`] is what sealing and opening report.
//!
//! Messages name what is wrong and never carry key material or credentials.
//!
//! One rule for causes, in every error of this crate: **a message names its cause, and `source()` does not
//! return it again.** An error that wraps another says the other's message in its own (`config X: key
//! primary: Sm2PrivateKeyFile: …: cannot read: No such file or directory (os error 2)`), so a log line's
//! `%e` is complete on its own, and the command line, which prints an error with its whole `source()`
//! chain (`{e:#}`, the chain anyhow context adds), says each cause exactly once. A foreign error whose
//! message is terse (a transport error) is wrapped with [`chain`], its own chain spelled out.

use std::fmt;
use std::sync::Arc;

use crate::ciphertext::FormatError;

/// What a failure means for the caller, independent of where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller's bytes are wrong: malformed, tampered, empty, too long, or a wrapped key that the named
    /// key-encryption key does not open.
    InvalidInput,
    /// The ciphertext names a key-encryption key this plugin was not given.
    UnknownKey,
    /// Might work later: a provider unreachable, timed out, overloaded, or answering garbage.
    Unavailable,
    /// A provider refused for a reason retrying will not fix (disabled or unknown key, a 4xx).
    Refused,
    /// A provider said our credentials may not use this key.
    PermissionDenied,
    /// A provider could not be built from its configuration.
    Config,
    /// A failure of this machine (its RNG) or a bug; never the caller's input.
    Internal,
}

impl ErrorKind {
    /// The metric label of a provider-call outcome with this kind (`outcome` of
    /// `gm_kms_provider_calls_total`).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_wrapped_key",
            ErrorKind::UnknownKey => "unknown_key",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Refused => "refused",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Config => "config",
            ErrorKind::Internal => "internal",
        }
    }
}

/// The message of a [`ProviderError`] and, when there is one, its cause.
#[derive(Clone)]
pub struct Detail {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Detail {
    /// Attaches the error this one was caused by: the message is followed by the cause's (and its
    /// sources', see [`chain`]) when displayed, and [`ProviderError::cause`] returns it. Give a message
    /// that does not already spell the cause out.
    pub fn because(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The message alone.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for Detail {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

impl From<&str> for Detail {
    fn from(message: &str) -> Self {
        Self::from(message.to_string())
    }
}

impl fmt::Debug for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detail")
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.source {
            Some(cause) => write!(f, ": {}", chain(cause.as_ref())),
            None => Ok(()),
        }
    }
}

/// An error's message followed by those of its `source()` chain, `: `-joined: for wrapping a foreign
/// error (whose own message may be as terse as `transport error`) into a message of this crate, which
/// then returns no `source()` (the rule in the module doc).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Equal when the messages are: the cause is context, not identity.
impl PartialEq for Detail {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Detail {}

/// Why a key provider could not do what was asked. The variant is the [`ErrorKind`]; the gRPC edge and
/// the metrics use [`ProviderError::kind`], never the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// Might work if tried again later: unreachable, timed out, 5xx, 429, a garbled or empty answer.
    Unavailable(Detail),
    /// The provider refused for a reason that retrying will not fix: a disabled or unknown key, a 4xx.
    Refused(Detail),
    /// The provider said our credentials may not use this key.
    PermissionDenied(Detail),
    /// The wrapped data key is not one this KEK opens (corrupted or wrapped by another key).
    InvalidWrappedKey(Detail),
    /// The provider could not be built from its configuration (bad key file, missing field).
    Config(Detail),
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            ProviderError::Unavailable(_) => "key provider unavailable: ",
            ProviderError::Refused(_) => "key provider refused the request: ",
            ProviderError::PermissionDenied(_) => "key provider denied access: ",
            ProviderError::InvalidWrappedKey(_) => "wrapped data key rejected: ",
            ProviderError::Config(_) => "",
        };
        write!(f, "{what}{}", self.detail())
    }
}

/// The message already names the cause ([`Detail::because`]), so there is no `source()`; the cause itself
/// is [`ProviderError::cause`].
impl std::error::Error for ProviderError {}

impl ProviderError {
    /// What the failure means for the caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProviderError::Unavailable(_) => ErrorKind::Unavailable,
            ProviderError::Refused(_) => ErrorKind::Refused,
            ProviderError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            ProviderError::InvalidWrappedKey(_) => ErrorKind::InvalidInput,
            ProviderError::Config(_) => ErrorKind::Config,
        }
    }

    fn detail(&self) -> &Detail {
        match self {
            ProviderError::Unavailable(d)
            | ProviderError::Refused(d)
            | ProviderError::PermissionDenied(d)
            | ProviderError::InvalidWrappedKey(d)
            | ProviderError::Config(d) => d,
        }
    }

    /// The underlying cause, if the provider recorded one (named in the message too).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.detail().source.as_deref()
    }
}

/// Why sealing or opening failed. [`Error::kind`] decides the gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are not a ciphertext this plugin can read.
    #[error("malformed ciphertext: {0}")]
    Malformed(FormatError),
    /// Well-formed, but sealed under a key-encryption key this plugin was not given.
    #[error(
        "ciphertext was sealed under key {0:?}, which is not in this plugin's keyring (add it to PreviousKeys)"
    )]
    UnknownKek(String),
    /// The tag did not verify: tampered, truncated, or a header that does not belong to the payload.
    #[error("ciphertext failed authentication (tampered, truncated, or not sealed by this key)")]
    Authentication,
    /// The key provider failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// kube-apiserver never sends one; sealing nothing would hide a caller bug.
    #[error("empty plaintext: nothing to encrypt")]
    EmptyPlaintext,
    /// The plaintext is too long for the KMS API that is to carry its ciphertext (the caller's input).
    #[error(
        "plaintext of {plaintext} bytes is too long for KMS {api}: its ciphertext would be {len} bytes, over the API's {limit}-byte limit"
    )]
    PlaintextTooLong {
        /// Length of the plaintext asked to seal.
        plaintext: usize,
        /// Length the ciphertext would have had.
        len: usize,
        /// The API's limit on a ciphertext.
        limit: usize,
        /// `v2`.
        api: &'static str,
    },
    /// Even an empty payload would not fit the API: the key provider's wrapped key alone is too long.
    #[error(
        "ciphertext of {len} bytes exceeds the {limit}-byte limit of KMS {api} (the key provider's wrapped data key is too long)"
    )]
    TooLong {
        /// Length the ciphertext would have had.
        len: usize,
        /// The API's limit on a ciphertext.
        limit: usize,
        /// `v1beta1` or `v2`.
        api: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("operating system RNG failed: {0}")]
    Rng(String),
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Malformed(e)
    }
}

impl Error {
    /// What the failure means for the caller (DESIGN §6): bad input is never `Internal`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Malformed(_)
            | Error::Authentication
            | Error::EmptyPlaintext
            | Error::PlaintextTooLong { .. } => ErrorKind::InvalidInput,
            Error::UnknownKek(_) => ErrorKind::UnknownKey,
            Error::Provider(p) => p.kind(),
            Error::TooLong { .. } | Error::Rng(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_error_keeps_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        let e = ProviderError::Unavailable(Detail::from("KMS unreachable").because(io));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(
            e.to_string(),
            "key provider unavailable: KMS unreachable: connect timed out"
        );
        assert_eq!(
            e.cause().expect("cause is kept").to_string(),
            "connect timed out"
        );
        assert!(ProviderError::Refused("x".into()).cause().is_none());
    }

    /// The rule of the module doc: no error says its `source()` again, so a chain printed in full says
    /// every cause once.
    #[test]
    fn no_message_repeats_its_source() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(Error::Malformed(FormatError::BadMagic)),
            Box::new(Error::Provider(ProviderError::Unavailable(
                Detail::from("x").because(io()),
            ))),
            Box::new(ProviderError::Config(Detail::from("y").because(io()))),
            Box::new(crate::config::ConfigError::Read {
                path: "/c.json".into(),
                cause: io(),
            }),
        ];
        for e in errors {
            assert!(e.source().is_none(), "{e} also returns its source");
            let text = e.to_string();
            assert_eq!(
                text.matches("entity not found").count(),
                text.contains("entity not found") as usize,
                "{text}"
            );
        }
    }

    #[test]
    fn kinds_of_every_error() {
        assert_eq!(Error::Authentication.kind(), ErrorKind::InvalidInput);
        assert_eq!(Error::UnknownKek("k".into()).kind(), ErrorKind::UnknownKey);
        assert_eq!(
            Error::Provider(ProviderError::InvalidWrappedKey("x".into())).kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(Error::Rng("x".into()).kind(), ErrorKind::Internal);
    }
}
