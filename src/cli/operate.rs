//! `retry`, `pause`, `resume`, `cancel`, `set-args`: validated operator actions, recorded with their actor.

use std::process::ExitCode;

use bgmigrate::config::Connected;
use bgmigrate::{Action, Args};

use super::{BadInput, actor, control};

/// Applies one action and says what it did.
pub async fn act(
    connected: &Connected,
    name: &str,
    action: Action,
    from_start: bool,
) -> anyhow::Result<ExitCode> {
    let record = control(connected)
        .act(name, action, from_start, &actor())
        .await?;
    let resume_note = match (action, from_start) {
        (Action::Retry, true) => " (checkpoint cleared: it starts from the beginning)",
        (Action::Retry, false) => " (it resumes from its checkpoint)",
        _ => "",
    };
    println!(
        "{name}: {action} done; status is now {}{resume_note}",
        record.status
    );
    Ok(ExitCode::SUCCESS)
}

/// Merges `json` into the args after validating it.
pub async fn set_args(connected: &Connected, name: &str, json: &str) -> anyhow::Result<ExitCode> {
    let patch = Args::parse_text(json)
        .map_err(|e| BadInput(format!("{name}: {e}; nothing was changed")))?;
    if let Some(problem) = bgmigrate::web::args_problem(&patch) {
        return Err(BadInput(format!("{name}: {problem}; nothing was changed")).into());
    }
    let record = control(connected).set_args(name, &patch, &actor()).await?;
    // Secret-looking values stay out of terminals and CI logs, as in the UI.
    println!(
        "{name}: args are now {}",
        bgmigrate::web::mask_secrets(&record.args)
    );
    Ok(ExitCode::SUCCESS)
}
