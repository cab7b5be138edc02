//! Stage `render`, one step: a runnable step's fields, checked for the place each takes in a
//! command or file, into its template; every decision about *what* runs was made by `lower`.

use minijinja::context;
use minijinja::value::Value;

use super::layer::LayerRenderer;
use super::systemd;
use super::RenderError;
use crate::plan::{
    download_extract, Action, BuilderKind, Repo, ReverseKind, RunAs, Scope, Step, Task, TaskVerb,
};
use crate::shell;

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

/// The fields of an [`Action::Builder`], borrowed.
struct BuilderStep<'p> {
    builder: BuilderKind,
    manifest: Option<&'p str>,
    packages: &'p [String],
    names: &'p [String],
    crate_name: Option<&'p str>,
    files: &'p [String],
}

impl<'a> LayerRenderer<'a> {
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
    pub(super) fn step_body(&mut self, n: usize, step: &Step) -> Result<String, RenderError> {
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
                let batchable = crate::batch::batchable_install(step).is_some();
                self.tpl(
                    &template,
                    context! {
                        layer, n, phase => step.phase.as_str(), packages, options, repos, keys,
                        copr, modules, exclude, setopts, batchable,
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
                let extract = download_extract(url, extract.as_deref()).ok_or_else(|| {
                    ck.invalid(
                        "task `extract:`",
                        extract.as_deref().unwrap_or_default(),
                        "is not one of tar.gz, tar.xz, tar.zst, zip, sh, none",
                    )
                })?;
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
}

/// The first target of the step's reverse op of `kind` (where that op will look for the file).
fn reverse_target(step: &Step, kind: ReverseKind) -> Option<String> {
    step.reverse
        .iter()
        .find(|op| op.kind == kind)
        .and_then(|op| op.targets.first().cloned())
}
