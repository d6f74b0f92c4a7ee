//! Version 1 of recast's API: what the server answers and the CLI reads.

use serde::{Deserialize, Serialize};

/// A value that names none of an enum's variants (read from a store or a peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

impl std::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown {} \"{}\"", self.what, self.value)
    }
}

impl std::error::Error for UnknownValue {}

/// An enum written as one of a fixed set of strings (in JSON and in the state store).
macro_rules! named {
    ($(#[$m:meta])* $name:ident ($what:literal) { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(UnknownValue { what: $what, value: s.to_string() }),
                }
            }
        }
    };
}

named! {
    /// Where a release stands.
    ReleaseOutcome ("release outcome") {
        /// Recorded, not rolled out yet.
        Pending = "pending",
        RollingOut = "rolling_out",
        Succeeded = "succeeded",
        RolledBack = "rolled_back",
        /// The rollout stopped where it failed (`auto_rollback = false`).
        Failed = "failed",
        Superseded = "superseded",
    }
}

impl ReleaseOutcome {
    /// The rollout of the release is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReleaseOutcome::Succeeded | ReleaseOutcome::RolledBack | ReleaseOutcome::Failed
        )
    }
}

named! {
    /// Where a rollout stands.
    RolloutState ("rollout state") {
        Running = "running",
        Succeeded = "succeeded",
        RolledBack = "rolled_back",
        Failed = "failed",
    }
}

named! {
    /// What an apply did to one service.
    ServiceChange ("service outcome") {
        Succeeded = "succeeded",
        RolledBack = "rolled_back",
        Unchanged = "unchanged",
        Removed = "removed",
        Failed = "failed",
    }
}

impl ServiceChange {
    /// The service is where the spec wants it.
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            ServiceChange::Succeeded | ServiceChange::Unchanged | ServiceChange::Removed
        )
    }
}

named! {
    /// Where an apply stands.
    ApplyState ("apply state") {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

named! {
    /// An instance's life.
    InstancePhase ("instance phase") {
        /// Started, not healthy yet.
        Starting = "starting",
        Running = "running",
        Exited = "exited",
    }
}

named! {
    /// One analysis window's judgement.
    VerdictResult ("verdict") {
        Pass = "pass",
        Fail = "fail",
        Inconclusive = "inconclusive",
    }
}

named! {
    /// What the guard found different from what was built.
    FindingKind ("finding kind") {
        Added = "added",
        Removed = "removed",
        Changed = "changed",
        UnexpectedMount = "unexpected_mount",
        Process = "process",
        Config = "config",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_its_name_and_json() {
        for v in ReleaseOutcome::ALL {
            assert_eq!(v.as_str().parse::<ReleaseOutcome>(), Ok(*v));
            let json = serde_json::to_string(v).expect("json");
            assert_eq!(json, format!("\"{}\"", v.as_str()));
        }
        for v in FindingKind::ALL {
            assert_eq!(v.as_str().parse::<FindingKind>(), Ok(*v));
        }
    }

    #[test]
    fn an_unknown_value_names_what_it_is_not() {
        let e = "sideways".parse::<RolloutState>().unwrap_err();
        assert_eq!(e.to_string(), "unknown rollout state \"sideways\"");
    }
}
