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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::{Object, Value};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::shell;

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
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
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
}

/// A value that is already a complete shell fragment and must be emitted verbatim.
///
/// Only two filters create it: `raw_shell` (a layer's `cmd:` body — the single reviewed path for
/// raw layer shell) and `runtime_path`/`runtime_word` (whose output is built by [`shell`]).
#[derive(Debug)]
struct ShellFragment(String);

impl Object for ShellFragment {}

/// The template engine: embedded templates (optionally overridden from a directory), strict
/// undefined variables, and a formatter that shell-quotes every interpolated value.
pub struct Engine {
    env: Environment<'static>,
    overridden: Vec<(String, String)>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("overridden", &self.overridden)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Build the engine from the embedded templates, replacing any that `override_dir` provides
    /// under the same relative name.
    pub fn new(override_dir: Option<&Path>) -> Result<Engine, RenderError> {
        let mut sources: BTreeMap<String, String> = crate::templates::EMBEDDED
            .iter()
            .map(|(n, s)| ((*n).to_string(), (*s).to_string()))
            .collect();
        let mut overridden = Vec::new();
        if let Some(dir) = override_dir {
            for (name, path) in
                list_template_files(dir).map_err(|source| RenderError::Override {
                    path: dir.to_path_buf(),
                    source,
                })?
            {
                if !sources.contains_key(&name) {
                    return Err(RenderError::UnknownOverride {
                        name,
                        known: sources.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| RenderError::Override { path, source })?;
                overridden.push((name.clone(), hex::encode(Sha256::digest(text.as_bytes()))));
                sources.insert(name, text);
            }
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Templates cannot opt out of quoting: `safe` is gone, and the formatter below ignores
        // both the auto-escape state (so `{% autoescape false %}` changes nothing) and the
        // "safe string" flag other filters may set.
        env.remove_filter("safe");
        env.set_formatter(|out, _state, value| {
            if let Some(fragment) = value.downcast_object_ref::<ShellFragment>() {
                return out.write_str(&fragment.0).map_err(minijinja::Error::from);
            }
            if value.is_undefined() || value.is_none() {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::UndefinedError,
                    "refusing to interpolate a missing value into a shell script",
                ));
            }
            let text = match value.as_str() {
                Some(s) => s.to_string(),
                None if value.kind() == minijinja::value::ValueKind::Seq
                    || value.kind() == minijinja::value::ValueKind::Map =>
                {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        "a list or map cannot be one shell word; iterate over it",
                    ))
                }
                None => value.to_string(),
            };
            let word = shell::quote(&text).map_err(|e| {
                minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
            })?;
            out.write_str(&word).map_err(minijinja::Error::from)
        });
        env.add_filter(
            "raw_shell",
            |body: String| -> Result<Value, minijinja::Error> {
                if body.contains('\0') {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        "shell body contains a NUL byte",
                    ));
                }
                Ok(Value::from_object(ShellFragment(body)))
            },
        );
        env.add_filter(
            "runtime_path",
            |s: String| -> Result<Value, minijinja::Error> {
                fragment(shell::runtime_word(&s, true))
            },
        );
        env.add_filter(
            "runtime_word",
            |s: String| -> Result<Value, minijinja::Error> {
                fragment(shell::runtime_word(&s, false))
            },
        );
        for (name, text) in sources {
            env.add_template_owned(name.clone(), text)
                .map_err(|source| RenderError::Template {
                    template: name,
                    source,
                })?;
        }
        Ok(Engine { env, overridden })
    }

    /// Render template `name` with `ctx`.
    pub fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String, RenderError> {
        let wrap = |source| RenderError::Template {
            template: name.to_string(),
            source,
        };
        self.env
            .get_template(name)
            .map_err(wrap)?
            .render(ctx)
            .map_err(wrap)
    }

    /// Templates replaced by the override directory, with the sha256 of each replacement.
    pub fn overridden(&self) -> &[(String, String)] {
        &self.overridden
    }
}

fn fragment(word: Result<String, shell::QuoteError>) -> Result<Value, minijinja::Error> {
    word.map(|w| Value::from_object(ShellFragment(w)))
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

/// Every regular file below `dir` as (relative name with `/`, path), sorted by name.
pub fn list_template_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((name, path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod engine_tests {
    use super::*;

    fn engine_with(src: &str) -> Environment<'static> {
        let mut e = Engine::new(None).expect("engine").env;
        e.add_template_owned("t", src.to_string())
            .expect("template");
        e
    }

    #[test]
    fn every_interpolation_is_quoted_and_cannot_be_unquoted() {
        let env = engine_with("echo {{ v }} {{ v|safe if false else v }} {% autoescape false %}{{ v }}{% endautoescape %}");
        let out = env
            .get_template("t")
            .unwrap()
            .render(minijinja::context! { v => "$(touch /x); `y`" })
            .unwrap();
        assert_eq!(
            out,
            "echo '$(touch /x); `y`' '$(touch /x); `y`' '$(touch /x); `y`'"
        );
        let env = engine_with("{{ v|safe }}");
        assert!(env
            .get_template("t")
            .unwrap()
            .render(minijinja::context! { v => "x" })
            .is_err());
    }

    #[test]
    fn undefined_and_nul_values_are_errors() {
        let env = engine_with("{{ missing }}");
        assert!(env.get_template("t").unwrap().render(()).is_err());
        let env = engine_with("{{ v }}");
        assert!(env
            .get_template("t")
            .unwrap()
            .render(minijinja::context! { v => "a\0b" })
            .is_err());
    }

    #[test]
    fn raw_shell_and_runtime_paths_are_the_only_verbatim_paths() {
        let env = engine_with("{{ body|raw_shell }}\nmkdir -p {{ p|runtime_path }}");
        let out = env
            .get_template("t")
            .unwrap()
            .render(minijinja::context! { body => "echo \"$HOME\"", p => "${HOME}/a b" })
            .unwrap();
        assert_eq!(out, "echo \"$HOME\"\nmkdir -p \"${OV_HOME}\"'/a b'");
    }

    #[test]
    fn embedded_templates_equal_the_templates_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let on_disk = list_template_files(&dir).expect("templates/ is readable");
        let on_disk: Vec<(String, String)> = on_disk
            .into_iter()
            .map(|(n, p)| (n, std::fs::read_to_string(p).expect("utf-8 template")))
            .collect();
        let embedded: Vec<(String, String)> = crate::templates::EMBEDDED
            .iter()
            .map(|(n, s)| ((*n).to_string(), (*s).to_string()))
            .collect();
        let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&embedded),
            names(&on_disk),
            "add new templates to compiler/src/templates.rs"
        );
        for ((name, a), (_, b)) in embedded.iter().zip(&on_disk) {
            assert_eq!(a, b, "embedded `{name}` differs from templates/{name}");
        }
    }
}
