//! Stage `cli`, shell completion: what a deploy or layer argument may be, read from the project
//! the shell is in (or `OV_PROJECT`), for the shell's own completion (clap's dynamic engine:
//! `ov completions bash` prints the hook that calls back into `ov` with `COMPLETE=bash`).
//! Invariant: completing never fails, prints nothing of its own and changes nothing: a directory
//! that is no project, or one that does not load, simply offers no names.

use std::ffi::OsStr;

use clap_complete::engine::CompletionCandidate;

use crate::commands::project::find_project;

/// The loaded project of the current directory, if there is one that loads.
fn project() -> Option<ov_compiler::project::Project> {
    let root = find_project(None).ok()?;
    ov_compiler::project::Project::load(&root).ok()
}

/// Candidates among `names` that start with what is typed so far.
fn matching(current: &OsStr, names: impl IntoIterator<Item = String>) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    names
        .into_iter()
        .filter(|n| n.starts_with(typed.as_ref()))
        .map(CompletionCandidate::new)
        .collect()
}

/// A deploy: `host`, `vm:<vm>` for every VM and every deploy node of the project.
pub fn deploys(current: &OsStr) -> Vec<CompletionCandidate> {
    let mut names = vec!["host".to_string()];
    if let Some(p) = project() {
        names.extend(p.vms.keys().map(|vm| format!("vm:{vm}")));
        names.extend(p.deployments.keys().cloned());
    }
    matching(current, names)
}

/// A layer of the project.
pub fn layers(current: &OsStr) -> Vec<CompletionCandidate> {
    let names: Vec<String> = project()
        .map(|p| p.layers.keys().cloned().collect())
        .unwrap_or_default();
    matching(current, names)
}
