//! gm-kms-plugin: a Kubernetes KMS encryption-provider plugin that seals with China's national
//! cryptographic algorithms.
//!
//! kube-apiserver calls `Encrypt`/`Decrypt` over gRPC on a unix socket (KMS API `v1beta1` and `v2`, both
//! served on one socket). Payloads are sealed with SM4-GCM under a data key; the data key is wrapped by a
//! key-encryption key from a [`provider::KeyProvider`] (a local SM2 key, or JD Cloud KMS).
//!
//! The layers, each knowing only the one below (DESIGN §1):
//! - [`api`]: the two gRPC services; maps requests to [`envelope`] calls and errors to status codes.
//! - [`envelope`]: seals and opens payloads; [`ciphertext`] is the byte layout, [`cipher`] the algorithm.
//! - [`datakeys`]: the current data key, its rotation, the unwrap cache.
//! - [`keyring`]: key-encryption keys by id, one primary.
//! - [`provider`]: the key providers.
#![forbid(unsafe_code)]

pub mod api;
pub mod authority;
pub mod cipher;
pub mod ciphertext;
pub mod cli;
pub mod config;
pub mod datakeys;
pub mod envelope;
pub mod error;
pub mod health;
pub mod http;
pub mod keyfile;
pub mod keyring;
pub mod metrics;
pub mod plugin;
pub mod proto;
pub mod provider;
pub mod secret;
pub mod selftest;
pub mod server;
#[doc(hidden)]
pub mod testing;

/// The plugin's name as reported to kube-apiserver (v1beta1 `Version.runtime_name`).
pub const RUNTIME_NAME: &str = "gm-kms-plugin";
/// The crate version, reported as v1beta1 `Version.runtime_version`.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");
