//! The contracts between recast's parts. The server and the CLI exchange the types of [`v1`]
//! (served under `/v1`); every recorded state and outcome is one of its enums, never a string
//! compared by hand.

mod layout;
pub mod v1;

/// Every path under a data directory, and the build cache's layout.
pub use layout::{BadName, CacheDir, DataDir};
