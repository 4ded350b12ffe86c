//! The library's error type for sealing and opening. The gRPC edge ([`crate::api`]) maps each variant to
//! one status code, once (DESIGN §6). Messages name what is wrong and never carry key material.

use crate::ciphertext::FormatError;
use crate::provider::ProviderError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are not a ciphertext this plugin can read.
    #[error("malformed ciphertext: {0}")]
    Malformed(#[from] FormatError),
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
    /// The result would break a limit of the KMS API that is to carry it.
    #[error("ciphertext of {len} bytes exceeds the {limit}-byte limit of KMS {api}")]
    TooLong {
        len: usize,
        limit: usize,
        api: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("operating system RNG failed: {0}")]
    Rng(String),
}
