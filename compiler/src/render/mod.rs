//! Stage `render`: InstallPlan → shell scripts and payload list, from the embedded minijinja
//! templates; every interpolated value is shell-quoted by the engine's formatter. Rendering
//! reads nothing from the file system: the plan names every payload file and carries every fact
//! about the layer directory a script needs.
//!
//! The types at the top of this file are the contract with `bundle`, which lays the rendered
//! files out in the archive, computes digests and writes the manifest.

mod check;
mod engine;
mod layer;
mod steps;
mod systemd;
mod undo;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::plan::{Action, InstallPlan, LayerPlan, Scope, Step, Venue};
use crate::shell;
pub use engine::{yaml_quote, Engine};
use layer::LayerRenderer;

/// Everything `render` produces for one plan; `bundle` turns it into the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Per layer, in install order.
    pub layers: Vec<RenderedLayer>,
    /// Shell functions the step scripts use (becomes part of `lib.sh`): the core helpers, then
    /// the rest.
    pub step_lib: String,
    /// Whether no system script names a helper beyond the core (`lib/steps-core.sh`): run.sh
    /// then reads `lib.sh` only up to the end of the core (`OV_M_LIB_CORE`).
    pub lib_core_only: bool,
    /// Template names overridden by `--templates DIR`, with the sha256 of the override.
    pub overridden_templates: Vec<(String, String)>,
}

/// One layer's rendered scripts, undo script and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedLayer {
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
    /// Its check script (`run.sh --check`): per step, what a run would change, changing nothing.
    pub check: String,
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

/// Why rendering failed.
#[derive(Debug, Error)]
pub enum RenderError {
    /// A template failed to compile or to render (syntax, undefined variable, quoting).
    #[error("template `{template}` failed")]
    Template {
        /// Template name, e.g. `steps/task.sh.j2`.
        template: String,
        /// The engine's error (carries line information).
        #[source]
        source: minijinja::Error,
    },
    /// A `--templates DIR` file could not be read.
    #[error("cannot read template override `{}`", path.display())]
    Override {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A verbatim file of `templates/` that does not exist (a bug in `ov`, not in the input).
    #[error("no file `{name}` among the embedded templates")]
    UnknownText {
        /// Its relative name, e.g. `lib/steps.sh`.
        name: String,
    },
    /// A `--templates DIR` file names no embedded template (a typo would otherwise be ignored).
    #[error("template override `{name}` does not replace any built-in template (known: {known})")]
    UnknownOverride {
        /// The relative name found in the directory.
        name: String,
        /// Comma-separated built-in names.
        known: String,
    },
    /// A value cannot be quoted for the shell.
    #[error("layer `{layer}`: {source}")]
    Quote {
        /// The layer the value came from.
        layer: String,
        /// Why.
        #[source]
        source: shell::QuoteError,
    },
    /// A template failed while rendering one layer's scripts.
    #[error("layer `{layer}`: template `{template}` failed")]
    LayerTemplate {
        /// The layer being rendered.
        layer: String,
        template: String,
        /// The engine's error.
        #[source]
        source: minijinja::Error,
    },
    /// A value does not have the shape its place in a command or file needs.
    #[error("layer `{layer}`: {what} `{value}` {reason}")]
    Invalid {
        /// The layer the value came from.
        layer: String,
        /// Which field, e.g. ``package name`` or ``task `mkdir:` path``.
        what: String,
        /// The value (escaped, shortened).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The step helpers most scripts need (files, directories, links, commands, env.d), shell
/// carried verbatim; it ends where run.sh stops reading `lib.sh` for a bundle that needs no more.
const STEP_LIB_CORE: &str = "lib/steps-core.sh";
/// The other step helpers (packages, services, builders, downloads, undo, check mode).
const STEP_LIB: &str = "lib/steps.sh";

/// Render every layer of `plan` into scripts, undo scripts and a payload list.
///
/// `project_root` locates payload files: `<root>/<LayerPlan.source>/<File.source>`. Steps are
/// grouped into one script per contiguous (scope, venue) run of a layer's runnable steps; skipped
/// steps (venue `skip`, or a gate this compile did not open) run nothing and appear as a comment
/// in the script they fall in.
pub fn render(
    plan: &InstallPlan,
    project_root: &Path,
    engine: &Engine,
) -> Result<Rendered, RenderError> {
    let core = engine.text(STEP_LIB_CORE)?;
    let rest = engine.text(STEP_LIB)?;
    let mut step_lib = core.to_string();
    if !step_lib.is_empty() && !step_lib.ends_with('\n') {
        step_lib.push('\n');
    }
    step_lib.push_str(rest);
    let layers = crate::par::map(&plan.layers, |lp| {
        LayerRenderer::new(plan, lp, project_root, engine)?.render()
    })
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let beyond_core = shell_functions(rest);
    let lib_core_only = layers
        .iter()
        .flat_map(|l| &l.scripts)
        .filter(|s| s.scope == Scope::System)
        .all(|s| !names_any(&s.content, &beyond_core));
    Ok(Rendered {
        layers,
        step_lib,
        lib_core_only,
        overridden_templates: engine.overridden_in_bundle(),
    })
}

/// The names of the functions `text` defines at its top level (`name() {` or `name() (` at the
/// start of a line, as the step helpers are written).
fn shell_functions(text: &str) -> std::collections::BTreeSet<&str> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once("() ")?;
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            (ok && (rest.starts_with('{') || rest.starts_with('('))).then_some(name)
        })
        .collect()
}

/// Whether `script` has a word (a run of `[A-Za-z0-9_]`) that is one of `names` — anywhere,
/// comments and `cmd:` bodies too, so a body that calls a helper itself counts.
fn names_any(script: &str, names: &std::collections::BTreeSet<&str>) -> bool {
    script
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| names.contains(w))
}

/// Why a step does not run, or `None` when it runs.
fn skip_reason(plan: &InstallPlan, step: &Step) -> Option<String> {
    if let Some(skip) = &step.skip {
        return Some(skip.reason.clone());
    }
    if step.venue == Venue::Skip {
        return Some("not run on this target".to_string());
    }
    if let Action::ContainerOnly { key } = &step.action {
        return Some(format!("`{key}` only applies to containers"));
    }
    match step.gate {
        Some(gate) if !plan.gates.allows(gate) => Some(format!("requires --{}", gate.as_str())),
        _ => None,
    }
}

/// Refuse a layer plan in which any string holds a NUL byte (no shell string can carry one).
fn no_nul(lp: &LayerPlan) -> Result<(), RenderError> {
    fn walk(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => Some(s.clone()),
            serde_json::Value::Array(a) => a.iter().find_map(walk),
            serde_json::Value::Object(o) => o.iter().find_map(|(k, v)| {
                if k.contains('\0') {
                    Some(k.clone())
                } else {
                    walk(v)
                }
            }),
            _ => None,
        }
    }
    let value = serde_json::to_value(lp).unwrap_or(serde_json::Value::Null);
    if let Some(s) = walk(&value) {
        // Quoting refuses the string, with the error that names it.
        shell::quote(&s).map_err(|source| RenderError::Quote {
            layer: lp.name.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_names_are_read_from_definitions_and_matched_as_whole_words() {
        let text = "# ov_gone() { is a comment\nov_a() {\n  ov_b x\n}\nov_c() (\n  :\n)\n  ov_d() {\nOV_E() {\n";
        let defined = shell_functions(text);
        assert_eq!(defined.into_iter().collect::<Vec<_>>(), ["ov_a", "ov_c"]);
        let names = shell_functions(text);
        assert!(names_any("x; ov_c \"$1\"", &names));
        assert!(names_any("# see ov_a", &names), "comments and bodies count");
        assert!(!names_any("ov_ab ov_c_v xov_a", &names), "only whole words");
    }

    /// The core must be enough on its own: run.sh reads only the core for a bundle whose system
    /// scripts name nothing beyond it, so no core helper may call (or even name) one of the rest.
    #[test]
    fn the_core_helpers_name_no_helper_beyond_the_core() {
        let engine = Engine::new(None).expect("engine");
        let core = engine.text(STEP_LIB_CORE).expect("core");
        let rest = shell_functions(engine.text(STEP_LIB).expect("rest"));
        assert!(rest.len() > 50, "{rest:?}");
        assert!(shell_functions(core).len() > 20);
        let named: Vec<&str> = core
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| rest.contains(w))
            .collect();
        assert!(named.is_empty(), "the core names {named:?}");
        // Nothing is defined twice, and the core ends with the guard run.sh stops at.
        let both: Vec<&str> = shell_functions(core)
            .into_iter()
            .filter(|f| rest.contains(f))
            .collect();
        assert!(both.is_empty(), "{both:?}");
        assert!(core
            .trim_end()
            .ends_with("if [[ ${ov_lib_core_only:-} == \"$$\" ]]; then return 0; fi"));
    }
}
