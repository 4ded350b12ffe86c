//! Integration tests: the real binary on a real unix socket, real gRPC clients (tonic and grpcio), the
//! OpenSSL CLI and Python `cryptography` as independent implementations. One test binary, so the crate
//! is linked once.

mod support {
    pub mod plugin;
    pub mod python;
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
