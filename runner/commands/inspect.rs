//! Stage `runner`, `ov inspect`: what a bundle holds — the manifest's listing, the manifest as
//! JSON, or one text file of it.
//! Invariant: reads the manifest and, with `--script`, that one file (each within the
//! `bundle_read` limits); refuses a bundle beyond them (exit 3).

use std::path::PathBuf;

use ov_compiler::bundle_read::Limits;

use crate::commands::project::{bundle_error, open_archive};
use crate::commands::{emit, json_text, CommandError};

/// Plain options of `ov inspect`.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// The bundle archive, or an unpacked bundle's directory.
    pub bundle: PathBuf,
    /// `--script PATH`: print this file of the bundle.
    pub script: Option<String>,
    /// `--json`.
    pub json: bool,
}

/// `ov inspect`.
pub fn run(opts: &InspectOptions) -> Result<(), CommandError> {
    let path = &opts.bundle;
    let inspection = if path.is_dir() {
        ov_compiler::bundle_dir::inspect_dir(path, opts.script.as_deref(), &Limits::default())
            .map_err(|e| bundle_error("inspect", path, e))?
    } else {
        let archive = open_archive(path, "inspect")?;
        ov_compiler::manifest::inspect(archive, opts.script.as_deref())
            .map_err(|e| bundle_error("inspect", path, e))?
    };
    let text =
        match &opts.script {
            Some(p) => inspection.script(p).map(str::to_string).ok_or_else(|| {
                CommandError::NotInBundle {
                    path: p.clone(),
                    files: inspection.paths().map(str::to_string).collect(),
                }
            })?,
            None if opts.json => json_text(&inspection.manifest)?,
            // The listing is trimmed; a line printed to a terminal or a pipe ends in a newline.
            None => inspection.manifest.listing() + "\n" + &inspection.manifest.provenance_text(),
        };
    emit(&text)
}
