//! Stage `render`, one layer: its steps grouped into one script per contiguous (scope, venue) run
//! of runnable steps, skipped steps shown as comments where they fall, and the payload the plan
//! names collected; reads nothing but the plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::context;
use minijinja::value::Value;

use super::check::Checker;
use super::engine::{Engine, ShellFragment};
use super::{no_nul, skip_reason, PayloadFile, RenderError, RenderedLayer, RenderedScript};
use crate::plan::{InstallPlan, LayerPlan, Scope, Venue};
use crate::shell;

/// Template names (relative to `templates/`).
const T_HEADER: &str = "steps/header.sh.j2";
const T_STEP: &str = "steps/step.sh.j2";
const T_SKIPPED: &str = "steps/skipped.sh.j2";
/// The check script's own parts (`run.sh --check`); each step's check is `check/<kind>.sh.j2`,
/// the twin of `steps/<kind>.sh.j2`, rendered with the same context.
const T_CHECK_HEADER: &str = "check/header.sh.j2";
const T_CHECK_STEP: &str = "check/step.sh.j2";
const T_CHECK_FOOTER: &str = "check/footer.sh.j2";

/// Payload files by path in the bundle (`files/<layer>/…`) → path on the compiling machine.
type PayloadMap = BTreeMap<String, PathBuf>;

/// Renders one layer of a plan: its scripts (here), each step's body (`steps`) and its undo
/// script (`undo`).
pub(super) struct LayerRenderer<'a> {
    pub(super) plan: &'a InstallPlan,
    pub(super) lp: &'a LayerPlan,
    engine: &'a Engine,
    /// Checks each value for the place it takes in a command or file, naming the layer.
    pub(super) ck: Checker<'a>,
    /// The layer directory on the compiling machine (only joined to payload paths, never read).
    dir: PathBuf,
    /// What the runnable steps carry in the bundle.
    payload: PayloadMap,
    /// Rendering a step's check (`check/…`) instead of the step (`steps/…`).
    checking: bool,
}

/// One line of a script: a runnable step, or a skipped one shown as a comment.
enum Item {
    Run(usize),
    Skipped(usize, String),
}

impl<'a> LayerRenderer<'a> {
    pub(super) fn new(
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
            dir: lp
                .source_dir
                .clone()
                .unwrap_or_else(|| project_root.join(&lp.source)),
            payload: PayloadMap::new(),
            checking: false,
        })
    }

    pub(super) fn tpl(&self, name: &str, ctx: Value) -> Result<String, RenderError> {
        let check_name;
        let name = match name.strip_prefix("steps/") {
            Some(rest) if self.checking => {
                check_name = format!("check/{rest}");
                check_name.as_str()
            }
            _ => name,
        };
        self.engine.render(name, &ctx).map_err(|e| match e {
            RenderError::Template { template, source } => RenderError::LayerTemplate {
                layer: self.lp.name.clone(),
                template,
                source,
            },
            other => other,
        })
    }

    pub(super) fn render(mut self) -> Result<RenderedLayer, RenderError> {
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
            let header = context! {
                layer => &self.lp.name,
                scope => scope.as_str(),
                venue => venue.as_str(),
                file_name => &file_name,
            };
            let mut content = self.tpl(T_HEADER, header.clone())?;
            let mut check = self.tpl(T_CHECK_HEADER, header)?;
            let mut steps = Vec::new();
            // (a step after which the script runs nothing tells the guard nothing: run.sh does,
            // for the layers after it)
            let last_run = items.iter().rev().find_map(|it| match it {
                Item::Run(i) => Some(*i),
                Item::Skipped(..) => None,
            });
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
                                foreign => step.runs_root_code(),
                                root_code => step.runs_root_code() && last_run != Some(i),
                            },
                        )?);
                        self.checking = true;
                        let probe = self.step_body(i + 1, step);
                        self.checking = false;
                        let probe = probe?.trim_end_matches('\n').to_string();
                        check.push('\n');
                        check.push_str(&self.tpl(
                            T_CHECK_STEP,
                            context! {
                                n => i + 1,
                                kind => step.kind(),
                                summary => step.action.summary(),
                                body => Value::from_object(ShellFragment(probe)),
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
            check.push_str(&self.tpl(T_CHECK_FOOTER, context! {})?);
            scripts.push(RenderedScript {
                file_name,
                scope,
                venue,
                content,
                check,
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

    /// Carry `rel` (a file of the layer directory, as the plan names it) in the bundle as
    /// `files/<layer>/<rel>`.
    pub(super) fn add_payload(&mut self, what: &str, rel: &str) -> Result<(), RenderError> {
        self.ck.relative(what, rel)?;
        self.payload
            .insert(format!("files/{}/{rel}", self.lp.name), self.dir.join(rel));
        Ok(())
    }

    pub(super) fn fragment(
        &self,
        word: Result<String, shell::QuoteError>,
    ) -> Result<Value, RenderError> {
        word.map(|w| Value::from_object(ShellFragment(w)))
            .map_err(|source| RenderError::Quote {
                layer: self.lp.name.clone(),
                source,
            })
    }
}
