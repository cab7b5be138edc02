//! Stage `runner`, `ov test`: run the layers' own checks (`tests:`) on the target — compile
//! (unless given a bundle), upload, verify, `run.sh --test` — and report them (exit 9 if one
//! fails).
//! Invariant: changes nothing on the target, nor in the saved state.

use std::path::PathBuf;

use crate::commands::project::{bundle_and_target, BuildOptions, Selection};
use crate::commands::push::{push, PushCommand};
use crate::commands::{CommandError, Connection};
use crate::push::{RunMode, TestFilter};
use crate::target::cloud_init::CloudInitOptions;

/// Plain options of `ov test`.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// `-C/--project`.
    pub project: Option<PathBuf>,
    /// The deploy (or bundle) and its layers.
    pub selection: Selection,
    /// How the bundle is compiled.
    pub build: BuildOptions,
    /// How to reach the target.
    pub connection: Connection,
    /// Which checks (`--layer`, `--scope`).
    pub filter: TestFilter,
    /// `--user`.
    pub user: Option<String>,
    /// Wait for cloud-init first (`--no-wait-cloud-init` turns it off).
    pub wait_cloud_init: bool,
}

/// `ov test`.
pub fn run(req: &TestRequest) -> Result<(), CommandError> {
    let (bundle, target) = bundle_and_target(req.project.as_deref(), &req.selection, &req.build)?;
    push(&PushCommand {
        cloud_init: CloudInitOptions {
            wait: req.wait_cloud_init,
            ..CloudInitOptions::default()
        },
        user: req.user.clone().or(target.user.clone()),
        mode: RunMode::Test,
        test: req.filter.clone(),
        ..PushCommand::new(req.connection.common(&target), bundle)
    })
}
