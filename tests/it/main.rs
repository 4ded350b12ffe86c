//! Integration tests: the real binary on a real unix socket, real gRPC clients (tonic, a frame-level
//! HTTP/2 client for kube-apiserver's `:authority` forms), the OpenSSL CLI, and the answers of independent
//! implementations frozen in `tests/vectors/`. One test binary, so the crate is linked once.
//!
//! Tests in a `live` module (`<file>::live::<name>`, `#[ignore]`d) run the Python oracles of `tests/py/`
//! at test time (grpcio, `cryptography`); they need the venv, and `scripts/test.sh` runs them in its
//! second step: `cargo test --lib --test it -- --ignored live::`.
// Test code: a panic is a failed test, and helpers shared across modules are `pub` by nature.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

mod support {
    pub mod load;
    pub mod plugin;
    pub mod python;
    pub mod rawh2;
    pub mod sdf;
}

mod apiserver;
mod attack_files;
mod attack_probes;
mod attack_socket;
mod cli;
mod deploy;
mod doc_commands;
mod golden;
mod grpc;
mod interop;
mod jdcloud;
mod jdcloud_net;
mod legacy;
mod monitoring;
mod ops;
mod process;
mod recover;
mod sdf;
mod status;
