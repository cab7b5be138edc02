//! Stage `runner`, `ov fetch`: fetch the remote layers a deploy (or the whole project) needs into
//! the repo cache and pin their commits in `ov.lock`; print each repository ref and its commit.
//! Invariant: the project's layers are loaded exactly as a compile loads them, so what `ov fetch`
//! fetches is what a later `--offline` compile reads.

use std::path::PathBuf;

use ov_compiler::deploy::resolve_deploy;
use ov_compiler::project::{DeployNode, Project};

use crate::commands::project::{command_line, find_project, remote_requests, Selection};
use crate::commands::{emit, CommandError};
use crate::repos::{prepare, FetchMode};
use crate::target::deploy::DeployArg;

/// Plain options of `ov fetch`.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// `-C DIR`.
    pub project: Option<PathBuf>,
    /// The deploy, if only its layers are wanted.
    pub deploy: Option<String>,
    /// Extra layers.
    pub add_layers: Vec<String>,
    /// `--distro TAG`.
    pub distro: Option<String>,
    /// `--update`.
    pub update: bool,
}

/// `ov fetch`.
pub fn run(opts: &FetchOptions) -> Result<(), CommandError> {
    let root = find_project(opts.project.as_deref())?;
    let mut project = Project::load(&root)?;
    let (requested, command) = match &opts.deploy {
        Some(deploy) => {
            let selection = Selection {
                add_layers: opts.add_layers.clone(),
                distro: opts.distro.clone(),
                ..Selection::deploy_only(opts.project.clone(), DeployArg::parse(deploy))
            };
            let (_, _, requested) = resolve_deploy(&project, &selection.request())?;
            (requested, selection.fetch_command())
        }
        None => {
            // Everything the project names: every layer, every deploy node's `add_layers`.
            let mut requested: Vec<String> = project.layers.keys().cloned().collect();
            fn nodes(node: &DeployNode, out: &mut Vec<String>) {
                out.extend(node.add_layers.iter().cloned());
                node.children.values().for_each(|c| nodes(c, out));
            }
            project
                .deployments
                .values()
                .for_each(|n| nodes(n, &mut requested));
            requested.extend(opts.add_layers.iter().cloned());
            let mut words = vec!["ov".to_string(), "fetch".to_string()];
            for l in &opts.add_layers {
                words.push("--add-layer".to_string());
                words.push(l.clone());
            }
            (requested, command_line(&words))
        }
    };
    let requested = remote_requests(&requested)?;
    let mode = if opts.update {
        FetchMode::Update
    } else {
        FetchMode::Fetch
    };
    let states = prepare(&mut project, &requested, mode, &command)?;
    let mut text = String::new();
    if states.is_empty() {
        text.push_str("no remote layers to fetch\n");
    }
    for s in &states {
        let note = match &s.moved_from {
            None => "locked".to_string(),
            Some(None) => "newly locked".to_string(),
            Some(Some(old)) => format!("moved from {old}"),
        };
        text.push_str(&format!("{} {} ({note})\n", s.at, s.commit));
    }
    emit(&text)
}
