//! The software GM/T 0018 (SDF) device as a shared library, for tests only (never shipped).
//!
//! Everything lives in [`gm_sdf::soft`]: the device logic in safe Rust and the `extern "C"` shims
//! that export `SDF_OpenDevice` … `SDF_InternalDecrypt_ECC`. Those shims are `unsafe` (they read and
//! write C memory), and `gm-sdf` is the workspace's only crate allowed `unsafe`; this crate has none
//! and only links them. rustc exports the `#[no_mangle]` functions of an upstream crate from a
//! `cdylib` (checked with `nm -D --defined-only`), so linking is all it takes.
//!
//! Tests find the built library with `gm_sdf::locate::soft_device_library()`.

#![forbid(unsafe_code)]

// Links the device into this cdylib; its C symbols are exported from here.
pub use gm_sdf::soft;
