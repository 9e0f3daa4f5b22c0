//! Lifecycle of a background migration: its [`Status`], the operator [`Action`]s, and which transitions are legal.
//!
//! The CLI and the HTTP API both go through [`Status::apply`], so an illegal action (pausing a finished migration)
//! is one typed error with one message everywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a background migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Registered, waiting for a worker (and for the migrations it waits on).
    Pending,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Stopped by an operator; keeps its checkpoint; `resume` makes it pending again.
    Paused,
    /// Every batch is done.
    Finished,
    /// Stopped by an error; `failed_reason` says why; `retry` resumes from the checkpoint.
    Failed,
    /// Stopped by an operator for good (until `retry`).
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Running,
        Status::Paused,
        Status::Finished,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The lowercase name stored in the control table.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// True when no worker will touch the migration again without an operator action.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Finished | Status::Failed | Status::Cancelled)
    }

    /// The status an operator action leads to, or why it is not allowed from here.
    pub fn apply(self, action: Action) -> Result<Status, TransitionError> {
        use Status::*;
        let next = match (action, self) {
            (Action::Pause, Pending | Running) => Paused,
            (Action::Resume, Paused) => Pending,
            (Action::Cancel, Pending | Running | Paused | Failed) => Cancelled,
            (Action::Retry, Failed | Cancelled) => Pending,
            (action, from) => return Err(TransitionError { from, action }),
        };
        Ok(next)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A status string in the control table that this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown migration status {0:?} in the control table")]
pub struct UnknownStatus(pub String);

/// An operator action on one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stop after the current batch, keep the checkpoint.
    Pause,
    /// Make a paused migration pending again.
    Resume,
    /// Stop for good (until retried).
    Cancel,
    /// Make a failed or cancelled migration pending again.
    Retry,
}

impl Action {
    /// The verb as operators type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Retry => "retry",
        }
    }

    /// Statuses from which this action is allowed, for error messages.
    pub fn allowed_from(self) -> Vec<Status> {
        Status::ALL
            .into_iter()
            .filter(|status| status.apply(self).is_ok())
            .collect()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action that is not allowed from the migration's current status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a migration that is {from}; {action} is allowed only when it is {}", list(&action.allowed_from()))]
pub struct TransitionError {
    /// The status the migration has.
    pub from: Status,
    /// The action that was refused.
    pub action: Action,
}

fn list(statuses: &[Status]) -> String {
    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    names.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pausing_a_finished_migration_is_refused_with_the_allowed_states() {
        let err = Status::Finished.apply(Action::Pause).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot pause a migration that is finished; pause is allowed only when it is pending or running"
        );
    }

    #[test]
    fn retry_makes_failed_and_cancelled_migrations_pending() {
        assert_eq!(Status::Failed.apply(Action::Retry), Ok(Status::Pending));
        assert_eq!(Status::Cancelled.apply(Action::Retry), Ok(Status::Pending));
        assert!(Status::Running.apply(Action::Retry).is_err());
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
        }
        assert!("done".parse::<Status>().is_err());
    }
}
