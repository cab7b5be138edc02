//! Stage `runner`, `ov test`: run the layers' own checks (`tests:`) on the target — compile
//! (unless given a bundle), upload, verify, `run.sh --test` — and report them (exit 9 if one
//! fails).
//! Invariant: changes nothing on the target, nor in the saved state.

use crate::apply::push::{PushOptions, RunMode, TestFilter};
use crate::commands::push::{push, PushCommand};
use crate::commands::{CommandError, Delivery};
use crate::target::cloud_init::CloudInitOptions;

/// Plain options of `ov test`.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// What to send, and where.
    pub delivery: Delivery,
    /// Which checks (`--layer`, `--scope`).
    pub filter: TestFilter,
    /// The account the checks run as (default: the deploy's).
    pub user: Option<String>,
    /// Wait for cloud-init first (`--no-wait-cloud-init` turns it off).
    pub wait_cloud_init: bool,
}

/// `ov test`.
pub fn run(req: &TestRequest) -> Result<(), CommandError> {
    let (bundle, target, common) = req.delivery.prepare()?;
    push(&PushCommand {
        common,
        options: PushOptions {
            cloud_init: CloudInitOptions {
                wait: req.wait_cloud_init,
                ..CloudInitOptions::default()
            },
            user: req.user.clone().or(target.user),
            mode: RunMode::Test,
            test: req.filter.clone(),
            templates: req.delivery.build.templates.clone(),
            ..PushOptions::new(bundle)
        },
    })
}
