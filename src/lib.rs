//! gm-kms-plugin: a Kubernetes KMS encryption-provider plugin that seals with China's national
//! cryptographic algorithms.
//!
//! kube-apiserver calls `Encrypt`/`Decrypt` over gRPC on a unix socket (KMS API `v1beta1` and `v2`, both
//! served on one socket). Payloads are sealed with SM4-GCM under a data key; the data key is wrapped by a
//! key-encryption key from a [`provider::KeyProvider`] (a local SM2 key, or JD Cloud KMS).
//!
//! The layers, each importing only those below it (DESIGN §1; the graph, checked in CI, is in
//! `docs/architecture.md`):
//! - `cli` and `plugin` put the parts together; `server` (the KMS socket) and `http` (health and metrics)
//!   serve them. Beside `plugin`: `recover` (etcd values opened offline) and `probe` (the `status` client).
//! - `api`: the two gRPC services; maps requests to envelope calls and error kinds to status codes.
//! - `health`, `metrics`: the background key round trip, and counters that the plugin hands snapshots to.
//! - `envelope`: seals and opens payloads; [`ciphertext`] is the byte layout, [`cipher`] the algorithm.
//! - `datakeys`: the current data key, its rotation, the unwrap cache.
//! - `keyring`: key-encryption keys by id, one primary.
//! - [`provider`]: the key providers.
//! - at the bottom: [`config`], `keyfile`, `secret`, `error`, `selftest`, [`proto`].
//!
//! The modules that are public are the API that the binary, tests, benchmarks and fuzz targets use; the
//! rest is private and reachable only through the re-exports below.
#![forbid(unsafe_code)]

mod api;
pub mod cipher;
pub mod ciphertext;
mod cli;
pub mod config;
mod datakeys;
mod envelope;
mod error;
mod health;
mod http;
mod keyfile;
mod keyring;
mod metrics;
mod plugin;
mod probe;
pub mod proto;
pub mod provider;
mod recover;
mod secret;
mod selftest;
mod server;

pub use api::{ApiSettings, Backend, services};
pub use cli::{AlreadyReported, Cli, run};
pub use datakeys::DataKeys;
pub use envelope::{Envelope, Sealed};
pub use error::{Detail, Error, ErrorKind, ProviderError};
pub use keyring::{Keyring, KeyringError};
pub use plugin::{LoadError, Plugin};
pub use secret::{DataKey, SecretString};

/// The plugin's name as reported to kube-apiserver (v1beta1 `Version.runtime_name`).
pub const RUNTIME_NAME: &str = "gm-kms-plugin";
/// The crate version, reported as v1beta1 `Version.runtime_version`.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");
