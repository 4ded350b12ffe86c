//! TODO
pub const HARD_MAX_USES: u64 = 1 << 32;
