//! Names the soft device and its users share (features `soft-device` and `locate-soft-device`).

/// Environment variable naming the soft device's key directory, read at `SDF_OpenDevice`.
pub const DIR_ENV: &str = "GM_SDF_SOFT_DIR";
/// Environment variable naming the soft device's profile (`gmt0018-2012` default, `gmt0018-2023`,
/// `sansec`), read at `SDF_OpenDevice`.
pub const PROFILE_ENV: &str = "GM_SDF_SOFT_PROFILE";
/// The soft device's `IssuerName`.
pub const ISSUER: &str = "gm-kms-plugin soft device";
/// The soft device's `DeviceName`.
pub const DEVICE_NAME: &str = "GM-SDF-SOFT";
/// The soft device's `DeviceSerial` (8-digit date, 3-character batch, 5-digit number).
pub const SERIAL: &str = "20250101SFT00001";
