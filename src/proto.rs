//! Generated code for the two Kubernetes KMS gRPC APIs (see `proto/` and `build.rs`).
#![allow(clippy::all, missing_docs)]

/// KMS API v1beta1 (`/v1beta1.KeyManagementService/*`).
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// KMS API v2 (`/v2.KeyManagementService/*`).
pub mod v2 {
    tonic::include_proto!("v2");
}
