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
    /// A template failed while rendering one layer's scripts.
    #[error("layer `{layer}`: template `{template}` failed")]
    LayerTemplate {
        /// The layer being rendered.
        layer: String,
        /// Template name.
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

/// A value that is already a complete shell fragment and must be emitted verbatim.
///
/// Filters create it: `raw_shell` (a layer's `cmd:` body — the single reviewed path for raw layer
/// shell), `runtime_path`/`runtime_word` (whose output is built by [`shell`]) and `comment` (text
/// with every line break and control character replaced, for `#` comments); `render` also builds
/// some from [`shell::concat_word`] (unit files with run-time values).
#[derive(Debug)]
struct ShellFragment(String);

impl Object for ShellFragment {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Plain
    }

    fn is_true(self: &std::sync::Arc<Self>) -> bool {
        !self.0.is_empty()
    }
}

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
                crate::walk::list_files(dir).map_err(|source| RenderError::Override {
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
        env.add_filter("comment", |text: String| -> Value {
            // A comment ends at a newline; with every control character gone, nothing after the
            // `#` can become code.
            let one_line: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Value::from_object(ShellFragment(one_line))
        });
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

// ---- the render stage ----------------------------------------------------------------------

mod check;
mod systemd;

use check::Checker;
use minijinja::context;

use crate::plan::{
    Action, BuilderKind, InstallPlan, LayerPlan, Phase, Repo, ReverseKind, ReverseOp, RunAs, Step,
    Task, TaskVerb,
};

/// Template names (relative to `templates/`).
const T_HEADER: &str = "steps/header.sh.j2";
const T_STEP: &str = "steps/step.sh.j2";
const T_SKIPPED: &str = "steps/skipped.sh.j2";
const T_UNDO: &str = "steps/undo.sh.j2";
const T_LIB: &str = "lib/steps.sh.j2";

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
    let step_lib = engine.render(T_LIB, &context! {})?;
    let layers = crate::par::map(&plan.layers, |lp| {
        LayerRenderer::new(plan, lp, project_root, engine)?.render()
    })
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    Ok(Rendered {
        layers,
        step_lib,
        overridden_templates: engine.overridden().to_vec(),
    })
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

/// Who a task or file acts as, relative to the account its script runs as.
enum Account {
    /// The script's own account (root for system scripts, the target user for user scripts).
    Script,
    /// The target user, from a root script.
    Target,
    /// Another named account, from a root script.
    Named(String),
}

impl Account {
    /// The owner for `chown`, as a run-time word source (`${UID}:${GID}` resolves on the target).
    fn owner(&self) -> String {
        match self {
            Account::Script => String::new(),
            Account::Target => "${UID}:${GID}".to_string(),
            Account::Named(n) => n.clone(),
        }
    }

    /// The account to switch to for a `cmd:` task (empty: no switch).
    fn run_as(&self) -> String {
        match self {
            Account::Script => String::new(),
            Account::Target => "${USER}".to_string(),
            Account::Named(n) => n.clone(),
        }
    }
}

/// A payload file found for the layer.
type PayloadMap = BTreeMap<String, PathBuf>;

struct LayerRenderer<'a> {
    plan: &'a InstallPlan,
    lp: &'a LayerPlan,
    engine: &'a Engine,
    ck: Checker<'a>,
    /// The layer directory on the compiling machine.
    dir: PathBuf,
    payload: PayloadMap,
}

/// The fields of an [`Action::Builder`], borrowed.
struct BuilderStep<'p> {
    builder: BuilderKind,
    manifest: Option<&'p str>,
    packages: &'p [String],
    names: &'p [String],
    crate_name: Option<&'p str>,
    files: &'p [String],
}

/// One line of a script: a runnable step, or a skipped one shown as a comment.
enum Item {
    Run(usize),
    Skipped(usize, String),
}

impl<'a> LayerRenderer<'a> {
    fn new(
        plan: &'a InstallPlan,
        lp: &'a LayerPlan,
        project_root: &Path,
        engine: &'a Engine,
    ) -> Result<Self, RenderError> {
        let ck = Checker { layer: &lp.name };
        if ck.name("layer name", &lp.name).is_err() {
            return Err(ck.invalid(
                "layer name",
                &lp.name,
                "must be letters, digits and `._+:@-`, starting with a letter or digit",
            ));
        }
        no_nul(lp)?;
        Ok(LayerRenderer {
            plan,
            lp,
            engine,
            ck,
            dir: project_root.join(&lp.source),
            payload: PayloadMap::new(),
        })
    }

    fn tpl(&self, name: &str, ctx: Value) -> Result<String, RenderError> {
        self.engine.render(name, &ctx).map_err(|e| match e {
            RenderError::Template { template, source } => RenderError::LayerTemplate {
                layer: self.lp.name.clone(),
                template,
                source,
            },
            other => other,
        })
    }

    fn render(mut self) -> Result<RenderedLayer, RenderError> {
        // Group: contiguous runs of runnable steps with equal (scope, venue); a skipped step joins
        // the script it falls in (the one before it, else the next one).
        let mut groups: Vec<(Scope, Venue, Vec<Item>)> = Vec::new();
        let mut pending: Vec<Item> = Vec::new();
        for (i, step) in self.lp.steps.iter().enumerate() {
            match skip_reason(self.plan, step) {
                Some(reason) => match groups.last_mut() {
                    Some(g) => g.2.push(Item::Skipped(i, reason)),
                    None => pending.push(Item::Skipped(i, reason)),
                },
                None => {
                    let key = (step.scope, step.venue);
                    match groups.last_mut() {
                        Some(g) if (g.0, g.1) == key => g.2.push(Item::Run(i)),
                        _ => {
                            let mut items = std::mem::take(&mut pending);
                            items.push(Item::Run(i));
                            groups.push((step.scope, step.venue, items));
                        }
                    }
                }
            }
        }
        let mut scripts = Vec::new();
        for (k, (scope, venue, items)) in groups.into_iter().enumerate() {
            let file_name = format!("{:02}-{}.sh", k + 1, scope.as_str());
            let mut content = self.tpl(
                T_HEADER,
                context! {
                    layer => &self.lp.name,
                    scope => scope.as_str(),
                    venue => venue.as_str(),
                    file_name => &file_name,
                },
            )?;
            let mut steps = Vec::new();
            for item in items {
                content.push('\n');
                match item {
                    Item::Run(i) => {
                        let step = &self.lp.steps[i];
                        let body = self.step_body(i + 1, step)?;
                        let body = body.trim_end_matches('\n').to_string();
                        content.push_str(&self.tpl(
                            T_STEP,
                            context! {
                                n => i + 1,
                                kind => step.kind(),
                                summary => step.action.summary(),
                                body => Value::from_object(ShellFragment(body)),
                            },
                        )?);
                        steps.push(step.action.summary());
                    }
                    Item::Skipped(i, reason) => {
                        let step = &self.lp.steps[i];
                        content.push_str(&self.tpl(
                            T_SKIPPED,
                            context! {
                                n => i + 1,
                                kind => step.kind(),
                                summary => step.action.summary(),
                                reason => reason,
                            },
                        )?);
                    }
                }
            }
            scripts.push(RenderedScript {
                file_name,
                scope,
                venue,
                content,
                steps,
            });
        }
        let undo = self.undo()?;
        let payload = std::mem::take(&mut self.payload)
            .into_iter()
            .map(|(bundle_path, source_path)| PayloadFile {
                bundle_path,
                source_path,
            })
            .collect();
        Ok(RenderedLayer {
            name: self.lp.name.clone(),
            scripts,
            undo,
            payload,
        })
    }

    // ---- payload ---------------------------------------------------------------------------

    /// Carry `rel` (a file of the layer directory, as the plan names it) in the bundle as
    /// `files/<layer>/<rel>`.
    fn add_payload(&mut self, what: &str, rel: &str) -> Result<(), RenderError> {
        self.ck.relative(what, rel)?;
        self.payload
            .insert(format!("files/{}/{rel}", self.lp.name), self.dir.join(rel));
        Ok(())
    }

    // ---- steps -----------------------------------------------------------------------------

    fn account(&self, scope: Scope, run_as: &RunAs) -> Result<Account, RenderError> {
        match (scope, run_as) {
            (Scope::System, RunAs::Root) => Ok(Account::Script),
            (Scope::System, RunAs::TargetUser) => Ok(Account::Target),
            (Scope::System, RunAs::Named(n)) => Ok(Account::Named(
                self.ck.account("task `user:`", n)?.to_string(),
            )),
            (_, RunAs::TargetUser) => Ok(Account::Script),
            (_, RunAs::Root) => Err(self.ck.invalid(
                "task `user:`",
                "root",
                "runs as root but the plan puts it in a user-scope script",
            )),
            (_, RunAs::Named(n)) => Err(self.ck.invalid(
                "task `user:`",
                n,
                "names another account; a user-scope script runs as the target user and cannot switch accounts (the plan must put such a step in system scope)",
            )),
        }
    }

    /// The shell text of one runnable step (without its comment header).
    fn step_body(&mut self, n: usize, step: &Step) -> Result<String, RenderError> {
        let layer = self.lp.name.clone();
        match &step.action {
            Action::SystemPackages {
                format,
                packages,
                options,
                repos,
                keys,
                copr,
                modules,
                exclude,
            } => {
                let ck = &self.ck;
                for p in packages {
                    ck.operand("package name", p)?;
                }
                for o in options {
                    ck.option("package `options:` entry", o)?;
                }
                for k in keys {
                    ck.operand("package `keys:` entry", k)?;
                }
                for c in copr {
                    ck.operand("package `copr:` entry", c)?;
                }
                let modules = modules
                    .iter()
                    .map(|m| {
                        ck.operand("package `modules:` entry", m)?;
                        let name = m.split(':').next().unwrap_or(m);
                        Ok(context! { name => name, spec => m })
                    })
                    .collect::<Result<Vec<_>, RenderError>>()?;
                let exclude = exclude
                    .iter()
                    .map(|e| {
                        Ok(format!(
                            "--exclude={}",
                            ck.line("package `exclude:` entry", e)?
                        ))
                    })
                    .collect::<Result<Vec<_>, RenderError>>()?;
                // A repository whose gpgcheck is off must stay off for the install itself.
                let setopts: Vec<String> = if format == "rpm" {
                    repos
                        .iter()
                        .filter(|r| matches!(r.gpgcheck.as_deref(), Some("false" | "0" | "no")))
                        .filter_map(|r| r.name.as_ref())
                        .map(|n| format!("--setopt={n}.gpgcheck=0"))
                        .collect()
                } else {
                    Vec::new()
                };
                let repos = repos
                    .iter()
                    .map(|r| self.repo(format, r))
                    .collect::<Result<Vec<_>, _>>()?;
                let template = match format.as_str() {
                    "pac" | "deb" | "rpm" => format!("steps/packages-{format}.sh.j2"),
                    other => {
                        return Err(self.ck.invalid(
                            "package format",
                            other,
                            "is not one of pac, deb, rpm (aur packages are a builder step)",
                        ))
                    }
                };
                self.tpl(
                    &template,
                    context! {
                        layer, n, phase => step.phase.as_str(), packages, options, repos, keys,
                        copr, modules, exclude, setopts,
                    },
                )
            }
            Action::RepoChange {
                format,
                path,
                content,
            } => {
                self.ck.path("repository file path", path)?;
                self.tpl(
                    "steps/repo-file.sh.j2",
                    context! { layer, n, format, path, content },
                )
            }
            Action::Task {
                task,
                run_as,
                ctx_files,
            } => {
                let account = self.account(step.scope, run_as)?;
                self.task(n, task, ctx_files.as_deref(), &account)
            }
            Action::File {
                source,
                dest,
                mode,
                run_as,
            } => {
                let account = self.account(step.scope, run_as)?;
                self.file(n, source, dest, mode, &account)
            }
            Action::ShellHook { env, path_append } => {
                for (k, _) in env {
                    self.ck.ident("`env:` name", k)?;
                }
                for p in path_append {
                    self.ck.path("`path_append:` entry", p)?;
                    if p.contains(':') {
                        return Err(self.ck.invalid(
                            "`path_append:` entry",
                            p,
                            "contains `:`, which would add more than one PATH entry",
                        ));
                    }
                }
                let env: Vec<Value> = env
                    .iter()
                    .map(|(k, v)| context! { name => k, value => v })
                    .collect();
                self.tpl(
                    "steps/shell-hook.sh.j2",
                    context! { layer, n, env, path_append },
                )
            }
            Action::ServicePackaged {
                unit,
                enable,
                service,
            } => {
                self.ck.unit("service unit", unit)?;
                let user = step.scope != Scope::System;
                let dropin = match systemd::packaged_dropin(&self.ck, service)? {
                    Some(text) => Some(self.fragment(shell::concat_word(&text.into_parts()))?),
                    None => None,
                };
                let default_path = if user {
                    format!("~/.config/systemd/user/{unit}.d/ov-{layer}.conf")
                } else {
                    format!("/etc/systemd/system/{unit}.d/ov-{layer}.conf")
                };
                let dropin_path =
                    reverse_target(step, ReverseKind::RemoveDropin).unwrap_or(default_path);
                self.ck.path("drop-in path", &dropin_path)?;
                self.tpl(
                    "steps/service-packaged.sh.j2",
                    context! {
                        layer, n, unit, enable, dropin, dropin_path,
                        sd_scope => if user { "user" } else { "system" },
                    },
                )
            }
            Action::ServiceCustom { unit, service } => {
                self.ck.unit("service unit", unit)?;
                let user = step.scope != Scope::System;
                let text = systemd::custom_unit(&self.ck, service, user)?;
                let unit_text = self.fragment(shell::concat_word(&text.into_parts()))?;
                let default_path = if user {
                    format!("~/.config/systemd/user/{unit}")
                } else {
                    format!("/etc/systemd/system/{unit}")
                };
                let unit_path =
                    reverse_target(step, ReverseKind::ServiceRemove).unwrap_or(default_path);
                self.ck.path("unit path", &unit_path)?;
                self.tpl(
                    "steps/service-custom.sh.j2",
                    context! {
                        layer, n, unit, unit_text, unit_path, enable => service.enable,
                        sd_scope => if user { "user" } else { "system" },
                    },
                )
            }
            Action::Builder {
                builder,
                manifest,
                packages,
                names,
                crate_name,
                files,
            } => self.builder(
                n,
                &BuilderStep {
                    builder: *builder,
                    manifest: manifest.as_deref(),
                    packages,
                    names,
                    crate_name: crate_name.as_deref(),
                    files,
                },
            ),
            Action::ContainerOnly { key } => Err(self.ck.invalid(
                "container-only key",
                key,
                "cannot run on a host (the plan should mark it skipped)",
            )),
        }
    }

    fn fragment(&self, word: Result<String, shell::QuoteError>) -> Result<Value, RenderError> {
        word.map(|w| Value::from_object(ShellFragment(w)))
            .map_err(|source| RenderError::Quote {
                layer: self.lp.name.clone(),
                source,
            })
    }

    /// A repository entry, checked and with the format's defaults filled in.
    fn repo(&self, format: &str, r: &Repo) -> Result<Value, RenderError> {
        let ck = &self.ck;
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let name = match &r.name {
            Some(n) => Some(ck.name("repository `name:`", n)?.to_string()),
            None => None,
        };
        let need_name = || {
            name.clone().ok_or_else(|| {
                ck.invalid(
                    "repository",
                    r.url.as_deref().unwrap_or(""),
                    "has no `name:`",
                )
            })
        };
        match format {
            "deb" => {
                if let Some(ppa) = &r.ppa {
                    ck.operand("repository `ppa:`", ppa)?;
                    return Ok(context! {
                        ppa, name => "", url => "", suite => "", components => "", key => "",
                        signed_by => "",
                    });
                }
                if let Some(k) = &r.key {
                    ck.url("repository `key:`", k)?;
                }
                if let Some(sb) = &r.signed_by {
                    ck.path("repository `signed_by:`", sb)?;
                    if sb.contains([' ', ']']) {
                        return Err(ck.invalid(
                            "repository `signed_by:`",
                            sb,
                            "contains a blank or `]`",
                        ));
                    }
                }
                // Without `url:` (the plan wrote the sources file as a `RepoChange`), the prepare
                // step only fetches the key into the keyring that file names.
                let url = match &r.url {
                    Some(u) => ck.url("repository `url:`", u)?.to_string(),
                    None if r.key.is_some() => String::new(),
                    None => {
                        return Err(ck.invalid(
                            "repository",
                            name.as_deref().unwrap_or(""),
                            "has none of `url:`, `key:`, `ppa:`",
                        ))
                    }
                };
                let name = need_name()?;
                let suite = r.suite.clone().unwrap_or_else(|| "stable".to_string());
                ck.word("repository `suite:`", &suite)?;
                let components = r.components.clone().unwrap_or_else(|| "main".to_string());
                ck.line("repository `components:`", &components)?;
                Ok(context! {
                    ppa => "", name, url, suite, components, key => opt(&r.key),
                    signed_by => opt(&r.signed_by),
                })
            }
            "rpm" => {
                for (what, v) in [
                    ("repository `url:`", &r.url),
                    ("repository `gpgkey:`", &r.gpgkey),
                    ("repository `rpm:`", &r.rpm),
                ] {
                    if let Some(v) = v {
                        ck.url(what, v)?;
                    }
                }
                // A `.repo` URL is stored under its own base name (as dnf does); a base URL
                // becomes `<name>.repo`.
                let file = match r.url.as_deref() {
                    Some(u) if u.split(['?', '#']).next().unwrap_or(u).ends_with(".repo") => {
                        let path = u.split(['?', '#']).next().unwrap_or(u);
                        let base = path.rsplit('/').next().unwrap_or("");
                        ck.name("repository file name", base)?;
                        format!("/etc/yum.repos.d/{base}")
                    }
                    Some(_) => format!("/etc/yum.repos.d/{}.repo", need_name()?),
                    None => String::new(),
                };
                let gpgcheck = match r
                    .gpgcheck
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref()
                {
                    Some("false" | "0" | "no") => "0",
                    _ => "1",
                };
                Ok(context! {
                    name => name.unwrap_or_default(), url => opt(&r.url), gpgkey => opt(&r.gpgkey),
                    gpgcheck, rpm => opt(&r.rpm), file,
                })
            }
            "pac" => {
                let name = need_name()?;
                let server = r
                    .server
                    .as_deref()
                    .or(r.url.as_deref())
                    .ok_or_else(|| ck.invalid("repository", &name, "has no `server:`"))?;
                ck.url("repository `server:`", server)?;
                let siglevel = r
                    .siglevel
                    .clone()
                    .unwrap_or_else(|| "Optional TrustAll".to_string());
                ck.line("repository `siglevel:`", &siglevel)?;
                if let Some(k) = &r.key {
                    ck.operand("repository `key:`", k)?;
                }
                Ok(context! { name, server, siglevel, key => opt(&r.key) })
            }
            other => Err(ck.invalid("package format", other, "has no repositories")),
        }
    }

    fn task(
        &mut self,
        n: usize,
        task: &Task,
        ctx_files: Option<&[String]>,
        account: &Account,
    ) -> Result<String, RenderError> {
        let layer = self.lp.name.clone();
        let ck = &self.ck;
        let mode = match &task.mode {
            Some(m) => Some(ck.mode("task `mode:`", m)?.to_string()),
            None => None,
        };
        let env = task
            .env
            .iter()
            .map(|(k, v)| Ok(context! { name => ck.ident("task `env:` name", k)?, value => v }))
            .collect::<Result<Vec<_>, RenderError>>()?;
        let owner = account.owner();
        match &task.verb {
            TaskVerb::Cmd { body } => {
                let uses_ctx = ctx_files.is_some();
                for f in ctx_files.unwrap_or_default() {
                    self.add_payload("payload file", f)?;
                }
                let mut body = body.clone();
                if !body.ends_with('\n') {
                    body.push('\n');
                }
                self.tpl(
                    "steps/task-cmd.sh.j2",
                    context! {
                        layer, n, body, env, uses_ctx, run_as => account.run_as(),
                        func => format!("ov_task_{n}"),
                    },
                )
            }
            TaskVerb::Mkdir { path } => {
                ck.path("task `mkdir:` path", path)?;
                self.tpl(
                    "steps/task-mkdir.sh.j2",
                    context! { layer, n, path, mode => mode.unwrap_or_default(), owner },
                )
            }
            TaskVerb::Copy { src, to } => {
                let dest = to.clone().unwrap_or_else(|| src.clone());
                let mode = mode.unwrap_or_else(|| "0644".to_string());
                self.file(n, src, &dest, &mode, account)
            }
            TaskVerb::Write { path, content } => {
                ck.path("task `write:` path", path)?;
                self.tpl(
                    "steps/task-write.sh.j2",
                    context! {
                        layer, n, path, content, owner,
                        mode => mode.unwrap_or_else(|| "0644".to_string()),
                    },
                )
            }
            TaskVerb::Link { path, target } => {
                ck.path("task `link:` path", path)?;
                ck.link_target("task `link:` target", target)?;
                self.tpl(
                    "steps/task-link.sh.j2",
                    context! { layer, n, path, target, owner },
                )
            }
            TaskVerb::Download {
                url,
                to,
                extract,
                include,
                strip_components,
            } => {
                ck.url("task `download:` URL", url)?;
                let extract = match extract {
                    Some(e) => match e.as_str() {
                        "tar.gz" | "tgz" => "tar.gz",
                        "tar.xz" | "txz" => "tar.xz",
                        "tar.zst" | "tzst" => "tar.zst",
                        "zip" => "zip",
                        "sh" => "sh",
                        "none" | "" => "none",
                        other => {
                            return Err(ck.invalid(
                                "task `extract:`",
                                other,
                                "is not one of tar.gz, tar.xz, tar.zst, zip, sh, none",
                            ))
                        }
                    },
                    None => extract_from_url(url),
                };
                let to = match to {
                    Some(t) => ck.path("task `download:` `to:`", t)?.to_string(),
                    None if extract == "sh" => String::new(),
                    None => {
                        return Err(ck.invalid(
                            "task `download:`",
                            url,
                            "has no `to:` (where to put the download)",
                        ))
                    }
                };
                for m in include {
                    ck.operand("task `include:` entry", m)?;
                }
                self.tpl(
                    "steps/task-download.sh.j2",
                    context! {
                        layer, n, url, to, extract, include, env, owner,
                        strip => strip_components.map(|s| s.to_string()).unwrap_or_default(),
                        mode => mode.unwrap_or_default(),
                    },
                )
            }
            TaskVerb::Setcap { path, caps } => {
                ck.path("task `setcap:` path", path)?;
                if !caps.is_empty() {
                    ck.operand("task `caps:`", caps)?;
                }
                self.tpl("steps/task-setcap.sh.j2", context! { layer, n, path, caps })
            }
            TaskVerb::Build { what } => {
                self.tpl("steps/task-build.sh.j2", context! { layer, n, what })
            }
        }
    }

    fn file(
        &mut self,
        n: usize,
        source: &str,
        dest: &str,
        mode: &str,
        account: &Account,
    ) -> Result<String, RenderError> {
        self.ck.path("file destination", dest)?;
        self.ck.mode("file mode", mode)?;
        self.add_payload("file source", source)?;
        let layer = self.lp.name.clone();
        self.tpl(
            "steps/file.sh.j2",
            context! { layer, n, source, dest, mode, owner => account.owner() },
        )
    }

    fn builder(&mut self, n: usize, step: &BuilderStep) -> Result<String, RenderError> {
        let layer = self.lp.name.clone();
        for f in step.files {
            self.add_payload("builder file", f)?;
        }
        let carries = |name: &str| step.files.iter().any(|f| f == name);
        let packages = step.packages;
        match step.builder {
            BuilderKind::Pixi => {
                let manifest = step.manifest.unwrap_or("pixi.toml");
                if !["pixi.toml", "pyproject.toml", "environment.yml"].contains(&manifest) {
                    return Err(self.ck.invalid(
                        "pixi manifest",
                        manifest,
                        "is not pixi.toml, pyproject.toml or environment.yml",
                    ));
                }
                self.add_payload("pixi manifest", manifest)?;
                self.tpl(
                    "steps/builder-pixi.sh.j2",
                    context! {
                        layer, n, manifest,
                        lock => if carries("pixi.lock") { "yes" } else { "no" },
                        build => if carries("build.sh") { "yes" } else { "no" },
                    },
                )
            }
            BuilderKind::Npm => {
                let manifest = step.manifest.unwrap_or("package.json");
                self.add_payload("npm manifest", manifest)?;
                for name in step.names {
                    self.ck.operand("package.json dependency", name)?;
                }
                for spec in packages {
                    self.ck.line("package.json version", spec)?;
                }
                self.tpl(
                    "steps/builder-npm.sh.j2",
                    context! { layer, n, names => step.names, specs => packages },
                )
            }
            BuilderKind::Cargo => {
                let manifest = step.manifest.unwrap_or("Cargo.toml");
                if manifest != "Cargo.toml" {
                    return Err(self
                        .ck
                        .invalid("cargo manifest", manifest, "is not Cargo.toml"));
                }
                self.add_payload("cargo manifest", manifest)?;
                let krate = step.crate_name.ok_or_else(|| {
                    self.ck
                        .invalid("cargo builder", manifest, "has no crate name in the plan")
                })?;
                self.ck.operand("Cargo.toml package name", krate)?;
                self.tpl("steps/builder-cargo.sh.j2", context! { layer, n, krate })
            }
            BuilderKind::Aur => {
                for p in packages {
                    self.ck.operand("aur package name", p)?;
                }
                self.tpl("steps/builder-aur.sh.j2", context! { layer, n, packages })
            }
        }
    }

    // ---- undo ------------------------------------------------------------------------------

    fn undo(&self) -> Result<String, RenderError> {
        let mut ops: Vec<Value> = Vec::new();
        let mut repo_setup = false;
        let runnable: Vec<&Step> = self
            .lp
            .steps
            .iter()
            .filter(|s| skip_reason(self.plan, s).is_none())
            .collect();
        for step in runnable.iter().rev() {
            // Last to first, except that a unit is disabled before its file goes, and a unit that
            // was enabled before is re-enabled last (the original ran these the other way round).
            let mut own = step.reverse.clone();
            own.extend(implied_reverse(step));
            let mut reverse: Vec<&ReverseOp> = own.iter().rev().collect();
            reverse.sort_by_key(|op| match op.kind {
                ReverseKind::ServiceDisable => 0,
                ReverseKind::RestoreEnabled => 2,
                _ => 1,
            });
            for op in reverse {
                ops.push(self.undo_op(op)?);
            }
            let sets_up_repos = matches!(
                &step.action,
                Action::SystemPackages { .. } if step.phase == Phase::Prepare
            );
            if sets_up_repos && !repo_setup {
                repo_setup = true;
                ops.push(context! {
                    kind => "repo-setup",
                    desc => "remove repository set-up (files, keys, sections, PPAs)",
                    scope => "system", format => "", targets => Vec::<String>::new(),
                });
            }
        }
        self.tpl(T_UNDO, context! { layer => &self.lp.name, ops })
    }

    fn undo_op(&self, op: &ReverseOp) -> Result<Value, RenderError> {
        let kind = serde_json::to_value(op.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let path_op = matches!(
            op.kind,
            ReverseKind::RmFileSystem
                | ReverseKind::RmFileUser
                | ReverseKind::RmDirRecursive
                | ReverseKind::ServiceRemove
                | ReverseKind::RemoveDropin
                | ReverseKind::RemoveEnvdFile
                | ReverseKind::RemoveRepoFile
        );
        for t in &op.targets {
            if path_op {
                self.ck.path(&format!("reverse op `{kind}` target"), t)?;
            } else if op.kind == ReverseKind::ServiceDisable
                || op.kind == ReverseKind::RestoreEnabled
            {
                self.ck.unit(&format!("reverse op `{kind}` target"), t)?;
            } else {
                self.ck.operand(&format!("reverse op `{kind}` target"), t)?;
            }
        }
        let format = op.format.clone().unwrap_or_default();
        if op.kind == ReverseKind::PackageRemove
            && !["pac", "deb", "rpm", "aur"].contains(&format.as_str())
        {
            return Err(self.ck.invalid(
                "reverse op `package-remove` format",
                &format,
                "is not pac, deb or rpm",
            ));
        }
        let scope = match (op.kind, op.scope) {
            (ReverseKind::RmFileUser | ReverseKind::RemoveEnvdFile, _) => "user",
            (_, Scope::System) => "system",
            _ => "user",
        };
        let desc = format!("{kind} {}", op.targets.join(" "))
            .trim_end()
            .to_string();
        Ok(context! { kind, desc, scope, format, targets => &op.targets })
    }
}

/// Reverse ops the scripts can carry out from their run-time facts although the plan has none:
/// a builder's recorded installs (cargo crates are only known after the build) and what an
/// archive download extracted (without `uninstall:`, the plan cannot name the files).
fn implied_reverse(step: &Step) -> Vec<ReverseOp> {
    let has = |kinds: &[ReverseKind]| step.reverse.iter().any(|op| kinds.contains(&op.kind));
    let op = |kind, scope, targets: Vec<String>| ReverseOp {
        kind,
        format: None,
        targets,
        scope,
        extra: BTreeMap::new(),
    };
    match &step.action {
        Action::Builder { builder, .. } => {
            let kind = match builder {
                BuilderKind::Cargo => ReverseKind::CargoUninstall,
                BuilderKind::Npm => ReverseKind::NpmUninstallG,
                BuilderKind::Pixi => ReverseKind::PixiEnvRemove,
                BuilderKind::Aur => return Vec::new(),
            };
            if has(&[kind]) {
                Vec::new()
            } else {
                vec![op(kind, Scope::User, Vec::new())]
            }
        }
        Action::Task { task, .. } => match &task.verb {
            TaskVerb::Download {
                url,
                to: Some(to),
                extract,
                ..
            } => {
                let archive = match extract.as_deref() {
                    Some(e) => !matches!(e, "none" | "sh" | ""),
                    None => !matches!(extract_from_url(url), "none" | "sh"),
                };
                if archive && !has(&[ReverseKind::RmFileSystem, ReverseKind::RmFileUser]) {
                    let kind = if step.scope == Scope::System {
                        ReverseKind::RmFileSystem
                    } else {
                        ReverseKind::RmFileUser
                    };
                    vec![op(kind, step.scope, vec![to.clone()])]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The first target of the step's reverse op of `kind` (where that op will look for the file).
fn reverse_target(step: &Step, kind: ReverseKind) -> Option<String> {
    step.reverse
        .iter()
        .find(|op| op.kind == kind)
        .and_then(|op| op.targets.first().cloned())
}

/// `extract:` when absent: from the URL's suffix (query and fragment ignored).
fn extract_from_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".tar.gz") || path.ends_with(".tgz") {
        "tar.gz"
    } else if path.ends_with(".tar.xz") || path.ends_with(".txz") {
        "tar.xz"
    } else if path.ends_with(".tar.zst") || path.ends_with(".tzst") {
        "tar.zst"
    } else if path.ends_with(".zip") {
        "zip"
    } else if path.ends_with(".sh") {
        "sh"
    } else {
        "none"
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
    match walk(&value) {
        Some(s) => Err(RenderError::Quote {
            layer: lp.name.clone(),
            source: shell::QuoteError::Nul {
                preview: s
                    .split('\0')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(40)
                    .collect(),
            },
        }),
        None => Ok(()),
    }
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
    fn comments_stay_on_one_line() {
        let env = engine_with("# {{ v|comment }}\nok");
        let out = env
            .get_template("t")
            .unwrap()
            .render(minijinja::context! { v => "a\nov_pwn\r\u{1b}b" })
            .unwrap();
        assert_eq!(out, "# a ov_pwn  b\nok");
    }

    #[test]
    fn embedded_templates_equal_the_templates_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let on_disk = crate::walk::list_files(&dir).expect("templates/ is readable");
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
