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
mod cli;
mod deploy;
mod golden;
mod grpc;
mod interop;
mod jdcloud;
mod legacy;
mod ops;
mod process;
mod sdf;
