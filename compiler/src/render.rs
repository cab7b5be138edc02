//! Stage `render`: InstallPlan → shell scripts and payload list, from the embedded minijinja
//! templates; every interpolated value is shell-quoted by the engine's formatter.
//!
//! The types at the top of this file are the contract with `bundle`, which lays the rendered
//! files out in the archive, computes digests and writes the manifest.

use crate::plan::{Scope, Venue};

/// Everything `render` produces for one plan; `bundle` turns it into the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Per layer, in install order.
    pub layers: Vec<RenderedLayer>,
    /// Shell functions the step scripts use (becomes part of `lib.sh`).
    pub step_lib: String,
    /// Template names overridden by `--templates DIR`, with the sha256 of the override.
    pub overridden_templates: Vec<(String, String)>,
}

/// One layer's rendered scripts, undo script and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedLayer {
    /// Layer name.
    pub name: String,
    /// Scripts in order: one per contiguous (scope, venue) run of the layer's runnable steps.
    pub scripts: Vec<RenderedScript>,
    /// Undo script for this layer: runs its reverse ops last-to-first, as root, reading the
    /// run-time facts the install scripts recorded under `$OV_STATE`. Stored in the target's
    /// ledger beside the layer record so teardown needs neither `ov` nor the bundle.
    pub undo: String,
    /// Payload files carried in the bundle under `files/<layer>/…`.
    pub payload: Vec<PayloadFile>,
}

/// One generated script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedScript {
    /// File name inside the layer directory, e.g. `01-system.sh`.
    pub file_name: String,
    /// Who runs it: `System` as root; `User`/`UserProfile` as the target user with its HOME.
    pub scope: Scope,
    /// Where it runs.
    pub venue: Venue,
    /// The script text (starts with a shebang and `set -euo pipefail`).
    pub content: String,
    /// One-line summaries of the steps it performs (for the manifest and `--list`).
    pub steps: Vec<String>,
}

/// A file from a layer directory that travels inside the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// Path inside the bundle, relative to its top directory: `files/<layer>/<source>`.
    pub bundle_path: String,
    /// Absolute path on the compiling machine.
    pub source_path: std::path::PathBuf,
}
