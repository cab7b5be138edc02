//! Stage `lower`, `tasks:`: each task with the layer's `vars:` applied and its target paths
//! normalised; `copy:` becomes a `File` step whose source must be inside the layer directory,
//! every other verb a `Task` step, with who runs it, its gate and what undoes it.

use std::path::{Component, Path};

use crate::layer::{normalise_dest, Layer, Task, TaskVerb};
use crate::plan::{download_extract, Action, Gate, Gates, ReverseKind, RunAs, Scope, Skip, Step};

use super::builders::layer_files;
use super::{check_env_names, rev, step, LayerAt, LowerError};

/// `user:` → who runs a task: absent, `root`, `0` or `0:0` is root; `${USER}`, `$USER`, `${UID}`
/// or `${UID}:${GID}` is the target user; anything else a named account.
fn run_as(user: Option<&str>) -> RunAs {
    match user.map(str::trim) {
        None | Some("" | "root" | "0" | "0:0") => RunAs::Root,
        Some("${USER}" | "$USER" | "${UID}" | "${UID}:${GID}") => RunAs::TargetUser,
        Some(other) => RunAs::Named(other.to_string()),
    }
}

pub(super) fn lower_task(
    gates: Gates,
    layer_name: &str,
    layer: &Layer,
    task: &Task,
) -> Result<Step, LowerError> {
    let who = run_as(task.user.as_deref());
    // Only the target user's own tasks go in a user-scope script: a task of another named
    // account is root's to run (it switches to that account; files are made as root and given
    // to it), so it is a root step — gated like one. (The original ran such a task as the SSH
    // user, whoever it named.)
    let scope = if who == RunAs::TargetUser {
        Scope::User
    } else {
        Scope::System
    };
    let rm = if scope == Scope::System {
        ReverseKind::RmFileSystem
    } else {
        ReverseKind::RmFileUser
    };
    check_env_names(
        layer_name,
        &task.env,
        &format!("the task at line {}", task.pos.line),
    )?;
    check_env_names(layer_name, &layer.vars, "`vars:`")?;
    let mut with_vars = apply_vars(task, &layer.vars);
    normalise_dests(layer_name, LayerAt::of(layer, task), &mut with_vars)?;
    let mut ctx_files = None;
    if let TaskVerb::Cmd { body } = &mut with_vars.verb {
        let (resolved, uses_ctx) = resolve_ctx(body);
        if uses_ctx {
            // `/ctx/` was the whole layer directory in the original: carry all of it.
            *body = resolved;
            ctx_files = Some(layer_files(layer_name, &layer.source_dir, "")?);
        }
    }
    let task = &with_vars;
    // The path on the target and the field that says it (`to:` where there is one).
    let target_path = match &task.verb {
        TaskVerb::Copy { to: Some(to), .. } | TaskVerb::Download { to: Some(to), .. } => {
            Some((to, "to"))
        }
        TaskVerb::Copy { src, to: None } => Some((src, "copy")),
        TaskVerb::Mkdir { path }
        | TaskVerb::Write { path, .. }
        | TaskVerb::Link { path, .. }
        | TaskVerb::Setcap { path, .. } => Some((path, task.verb.name())),
        TaskVerb::Download { to: None, .. } | TaskVerb::Cmd { .. } | TaskVerb::Build { .. } => None,
    };
    if let Some((path, field)) = target_path.filter(|(p, _)| !is_anchored(p)) {
        return Err(LowerError::RelativeTarget {
            layer: layer_name.to_string(),
            at: LayerAt::of(layer, task),
            field,
            path: path.clone(),
        });
    }

    if let TaskVerb::Copy { src, to } = &task.verb {
        let dest = to.clone().unwrap_or_else(|| src.clone());
        let skip = copy_source_check(layer_name, layer, task, src)?;
        return Ok(step(
            Action::File {
                source: src.clone(),
                dest: dest.clone(),
                mode: task.mode.clone().unwrap_or_else(|| "0644".to_string()),
                run_as: who,
            },
            scope,
            vec![rev(rm, scope, vec![dest])],
        )
        .skipped(skip));
    }

    let (reverse, skip) = match &task.verb {
        TaskVerb::Write { path, .. } | TaskVerb::Link { path, .. } => {
            (vec![rev(rm, scope, vec![path.clone()])], None)
        }
        TaskVerb::Download {
            url, to, extract, ..
        } => {
            let targets = if !task.uninstall.is_empty() {
                task.uninstall.clone()
            } else if download_extract(url, extract.as_deref()) == Some("none") {
                to.iter().cloned().collect()
            } else {
                // An archive extracted into `to` (often a shared directory such as
                // `/usr/local/bin`): without `uninstall:` there is no safe list of files to
                // remove, and removing `to` itself could wipe unrelated files.
                Vec::new()
            };
            let reverse = if targets.is_empty() {
                Vec::new()
            } else {
                vec![rev(rm, scope, targets)]
            };
            (reverse, None)
        }
        TaskVerb::Build { .. } => (
            Vec::new(),
            Some(Skip {
                reason: "`build:` only places builders in a container build; nothing to do here"
                    .to_string(),
                enable_with: None,
            }),
        ),
        TaskVerb::Cmd { .. }
        | TaskVerb::Mkdir { .. }
        | TaskVerb::Setcap { .. }
        | TaskVerb::Copy { .. } => (Vec::new(), None),
    };
    let gate = (scope == Scope::System && matches!(task.verb, TaskVerb::Cmd { .. }))
        .then_some(Gate::AllowRootTasks);
    Ok(step(
        Action::Task {
            task: task.clone(),
            run_as: who,
            ctx_files,
        },
        scope,
        reverse,
    )
    .skipped(skip)
    .gated(gate, gates))
}

/// The task with the layer's `vars:` applied, as the original's container build saw it there
/// (`ENV K="v"` at the top of the layer's section): `${K}` / `$K` in the task's paths, link
/// targets, URLs and `uninstall:` entries become the value now, at compile time (so a reader of
/// the bundle sees the real URL), and a `cmd:` gets them exported, ahead of its own `env:` (which
/// wins on a clash). `write:` content and `cmd:` bodies are never rewritten: in the original they
/// were not substituted either — a body reads the exported variable itself.
fn apply_vars(task: &Task, vars: &[(String, String)]) -> Task {
    let mut task = task.clone();
    if vars.is_empty() {
        return task;
    }
    let sub = |s: &mut String| *s = substitute_vars(s, vars);
    match &mut task.verb {
        TaskVerb::Cmd { .. } => {
            let mut env = vars.to_vec();
            env.append(&mut task.env);
            task.env = env;
        }
        TaskVerb::Mkdir { path } | TaskVerb::Write { path, .. } | TaskVerb::Setcap { path, .. } => {
            sub(path)
        }
        TaskVerb::Copy { to, .. } => to.iter_mut().for_each(sub),
        TaskVerb::Link { path, target } => {
            sub(path);
            sub(target);
        }
        TaskVerb::Download { url, to, .. } => {
            sub(url);
            to.iter_mut().for_each(sub);
        }
        TaskVerb::Build { .. } => {}
    }
    task.uninstall.iter_mut().for_each(sub);
    task
}

/// Normalise the paths `task` writes to ([`normalise_dest`]) once `vars:` are applied: the parser
/// did so for the text as written, so a `..` found here came from a variable's value.
fn normalise_dests(layer: &str, at: LayerAt, task: &mut Task) -> Result<(), LowerError> {
    let verb = task.verb.name();
    let fix = |field: &'static str, path: &mut String| -> Result<(), LowerError> {
        match normalise_dest(path) {
            Ok(p) => {
                *path = p.into_owned();
                Ok(())
            }
            Err(e) => Err(LowerError::ParentDirInTarget {
                layer: layer.to_string(),
                at: at.clone(),
                field,
                path: path.clone(),
                resolved: e.resolved,
            }),
        }
    };
    match &mut task.verb {
        TaskVerb::Mkdir { path }
        | TaskVerb::Write { path, .. }
        | TaskVerb::Link { path, .. }
        | TaskVerb::Setcap { path, .. } => fix(verb, path)?,
        TaskVerb::Copy { to: Some(to), .. } | TaskVerb::Download { to: Some(to), .. } => {
            fix("to", to)?
        }
        TaskVerb::Copy { .. }
        | TaskVerb::Download { .. }
        | TaskVerb::Cmd { .. }
        | TaskVerb::Build { .. } => {}
    }
    for p in &mut task.uninstall {
        fix("uninstall", p)?;
    }
    Ok(())
}

/// `s` with each `${NAME}` and `$NAME` (not followed by a name character) of `vars` replaced by
/// its value; any other `$` text is left as written.
fn substitute_vars(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let hit = vars.iter().find_map(|(name, value)| {
            if let Some(tail) = after
                .strip_prefix('{')
                .and_then(|t| t.strip_prefix(name.as_str()))
                .and_then(|t| t.strip_prefix('}'))
            {
                return Some((value, tail));
            }
            let tail = after.strip_prefix(name.as_str())?;
            let boundary = !tail.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            boundary.then_some((value, tail))
        });
        match hit {
            Some((value, tail)) => {
                out.push_str(value);
                rest = tail;
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether a path on the target is anchored: absolute, or under the target user's home. A
/// relative path would depend on the working directory of a generated script (the original's
/// container build resolved it against `WORKDIR`, its host renderer against whatever directory
/// `ov` ran in), so it is refused rather than guessed.
fn is_anchored(path: &str) -> bool {
    path.starts_with('/')
        || path == "~"
        || path.starts_with("~/")
        || path.starts_with("${HOME}")
        || path.starts_with("$HOME")
}

/// Checks a `copy:` source: `Ok(None)` when it is a file inside the layer directory, `Ok(Some)`
/// (a skip) when it is absent, an error when it escapes the directory or is not a file.
fn copy_source_check(
    layer_name: &str,
    layer: &Layer,
    task: &Task,
    src: &str,
) -> Result<Option<Skip>, LowerError> {
    let unsafe_src = || LowerError::UnsafeCopySource {
        layer: layer_name.to_string(),
        at: LayerAt::of(layer, task),
        src: src.to_string(),
    };
    let rel = Path::new(src);
    if src.is_empty()
        || rel.is_absolute()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(unsafe_src());
    }
    let path = layer.source_dir.join(rel);
    match std::fs::symlink_metadata(&path) {
        Err(_) => Ok(Some(Skip {
            reason: format!(
                "source `{src}` is not in the layer directory (a build artifact that was not built?); the file is not installed"
            ),
            enable_with: None,
        })),
        Ok(_) => {
            // Follow symlinks, then insist the real file is still inside the layer directory.
            let (Ok(real), Ok(dir)) = (path.canonicalize(), layer.source_dir.canonicalize()) else {
                return Err(unsafe_src());
            };
            if !real.starts_with(&dir) {
                return Err(unsafe_src());
            }
            if !real.is_file() {
                return Err(LowerError::CopySourceNotFile {
                    layer: layer_name.to_string(),
                    at: LayerAt::of(layer, task),
                    src: src.to_string(),
                });
            }
            Ok(None)
        }
    }
}

/// Replace `/ctx` references (the layer directory, in the original's container builds) by
/// `${OV_CTX}`, the layer's payload directory in the bundle. Only a `/ctx` that starts a path
/// (after a blank, quote, `=`, `:` or an operator) and ends one is replaced, so `/srv/ctx/` stays.
fn resolve_ctx(body: &str) -> (String, bool) {
    let mut out = String::with_capacity(body.len());
    let mut used = false;
    let mut prev: Option<char> = None;
    let mut rest = body;
    while !rest.is_empty() {
        let starts = rest.starts_with("/ctx")
            && prev.is_none_or(|p| p.is_whitespace() || "\"'=:;|&(<>`".contains(p))
            && rest[4..]
                .chars()
                .next()
                .is_none_or(|c| c == '/' || c.is_whitespace() || "\"';|&)<>`".contains(c));
        if starts {
            out.push_str("${OV_CTX}");
            used = true;
            rest = &rest[4..];
            prev = Some('x');
            continue;
        }
        let ch = rest.chars().next().unwrap_or_default();
        out.push(ch);
        prev = Some(ch);
        rest = &rest[ch.len_utf8()..];
    }
    (out, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::fixture::*;
    use crate::plan::Venue;

    #[test]
    fn vars_fill_paths_and_urls_and_reach_cmd_as_env() {
        let vars = vec![
            ("V".to_string(), "v1.2".to_string()),
            ("VERSION".to_string(), "9".to_string()),
        ];
        assert_eq!(
            substitute_vars("a/${V}/b-$V-$VERSION/${VERSION}x/$VX/${W}/$", &vars),
            "a/v1.2/b-v1.2-9/9x/$VX/${W}/$"
        );
        // Runtime names and anything unknown stay for the target (or stay literal).
        assert_eq!(
            substitute_vars("${HOME}/$(id -u)", &vars),
            "${HOME}/$(id -u)"
        );

        let dl = task(
            download(
                "https://example.org/${V}/t_${V}_${ARCH}.tgz",
                Some("/opt/t-${V}"),
            ),
            None,
        );
        let TaskVerb::Download { url, to, .. } = apply_vars(&dl, &vars).verb else {
            panic!("verb changed")
        };
        assert_eq!(url, "https://example.org/v1.2/t_v1.2_${ARCH}.tgz");
        assert_eq!(to.as_deref(), Some("/opt/t-v1.2"));

        let mut cmd = task(
            TaskVerb::Cmd {
                body: "echo ${V}".into(),
            },
            None,
        );
        cmd.env = vec![("V".into(), "own".into())];
        let out = apply_vars(&cmd, &vars);
        // The body is untouched; the vars come first so the task's own `env:` wins.
        assert_eq!(
            out.verb,
            TaskVerb::Cmd {
                body: "echo ${V}".into()
            }
        );
        let names: Vec<(&str, &str)> = out
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(names, [("V", "v1.2"), ("VERSION", "9"), ("V", "own")]);

        let write = task(
            TaskVerb::Write {
                path: "/etc/${V}.conf".into(),
                content: "${V}".into(),
            },
            None,
        );
        assert_eq!(
            apply_vars(&write, &vars).verb,
            TaskVerb::Write {
                path: "/etc/v1.2.conf".into(),
                content: "${V}".into()
            }
        );
    }

    #[test]
    fn tasks_run_as_scope_gate_and_reverse() {
        type Row = (Scope, Option<Gate>, bool, Vec<(ReverseKind, Vec<String>)>);
        let mut fx = Fixture::new();
        let mut l = named("t");
        let mut dl_plain = task(
            download("https://e.example/tool", Some("/usr/local/bin/tool")),
            Some("root"),
        );
        dl_plain.mode = Some("0755".into());
        let dl_archive = task(
            download("https://e.example/t.tar.gz", Some("/usr/local/bin")),
            None,
        );
        let mut dl_listed = dl_archive.clone();
        dl_listed.uninstall = vec!["/usr/local/bin/uv".into(), "/usr/local/bin/uvx".into()];
        l.tasks = vec![
            task(
                TaskVerb::Cmd {
                    body: "echo hi".into(),
                },
                None,
            ),
            task(
                TaskVerb::Cmd {
                    body: "echo me".into(),
                },
                Some("${USER}"),
            ),
            task(
                TaskVerb::Mkdir {
                    path: "/opt/x".into(),
                },
                Some("0:0"),
            ),
            task(
                TaskVerb::Write {
                    path: "${HOME}/.x".into(),
                    content: "c".into(),
                },
                Some("${USER}"),
            ),
            task(
                TaskVerb::Link {
                    path: "/usr/bin/x".into(),
                    target: "/opt/x".into(),
                },
                Some("root"),
            ),
            task(
                TaskVerb::Setcap {
                    path: "/usr/bin/sway".into(),
                    caps: "".into(),
                },
                None,
            ),
            dl_plain,
            dl_archive,
            dl_listed,
            task(TaskVerb::Cmd { body: "id".into() }, Some("postgres")),
            task(TaskVerb::Build { what: "all".into() }, Some("${USER}")),
        ];
        fx.add(l, &[]);
        let plan = fx.lower(DEBIAN, Gates::default(), &["t"]).unwrap();
        let s = &plan.layers[0].steps;
        let summary: Vec<Row> = s
            .iter()
            .map(|s| {
                (
                    s.scope,
                    s.gate,
                    s.skip.is_some(),
                    s.reverse
                        .iter()
                        .map(|r| (r.kind, r.targets.clone()))
                        .collect(),
                )
            })
            .collect();
        use ReverseKind::*;
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![
                (Scope::System, Some(Gate::AllowRootTasks), true, vec![]),
                (Scope::User, None, false, vec![]),
                (Scope::System, None, false, vec![]),
                (
                    Scope::User,
                    None,
                    false,
                    vec![(RmFileUser, v(&["${HOME}/.x"]))]
                ),
                (
                    Scope::System,
                    None,
                    false,
                    vec![(RmFileSystem, v(&["/usr/bin/x"]))]
                ),
                (Scope::System, None, false, vec![]),
                (
                    Scope::System,
                    None,
                    false,
                    vec![(RmFileSystem, v(&["/usr/local/bin/tool"]))]
                ),
                (Scope::System, None, false, vec![]),
                (
                    Scope::System,
                    None,
                    false,
                    vec![(
                        RmFileSystem,
                        v(&["/usr/local/bin/uv", "/usr/local/bin/uvx"])
                    )]
                ),
                // `user: postgres`: root switches to the account, so gated like a root task
                (Scope::System, Some(Gate::AllowRootTasks), true, vec![]),
                (Scope::User, None, true, vec![]),
            ]
        );
        let run_as: Vec<RunAs> = s
            .iter()
            .map(|s| match &s.action {
                Action::Task { run_as, .. } => run_as.clone(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(run_as[0], RunAs::Root);
        assert_eq!(run_as[1], RunAs::TargetUser);
        assert_eq!(run_as[9], RunAs::Named("postgres".into()));
        assert_eq!(s[10].venue, Venue::Skip);
        assert_eq!(
            s[0].skip.as_ref().unwrap().enable_with,
            Some(Gate::AllowRootTasks)
        );
    }

    #[test]
    fn copy_becomes_a_file_or_a_skip_or_an_error() {
        let mut fx = Fixture::new();
        let mut l = named("c");
        let mut exec = task(
            TaskVerb::Copy {
                src: "bin/tool".into(),
                to: Some("/usr/local/bin/tool".into()),
            },
            Some("root"),
        );
        exec.mode = Some("0755".into());
        l.tasks = vec![
            exec,
            task(
                TaskVerb::Copy {
                    src: "conf".into(),
                    to: Some("~/.conf".into()),
                },
                Some("${USER}"),
            ),
            task(
                TaskVerb::Copy {
                    src: "bin/ov".into(),
                    to: Some("/usr/local/bin/ov".into()),
                },
                Some("root"),
            ),
        ];
        fx.add(l, &[("bin/tool", "#!/bin/sh\n"), ("conf", "x")]);
        let plan = fx.lower(ARCH, Gates::default(), &["c"]).unwrap();
        let s = &plan.layers[0].steps;
        assert_eq!(
            s[0].action,
            Action::File {
                source: "bin/tool".into(),
                dest: "/usr/local/bin/tool".into(),
                mode: "0755".into(),
                run_as: RunAs::Root
            }
        );
        assert_eq!((s[0].scope, s[0].venue), (Scope::System, Venue::HostNative));
        assert_eq!(s[0].reverse[0].kind, ReverseKind::RmFileSystem);
        assert_eq!(
            s[1].action,
            Action::File {
                source: "conf".into(),
                dest: "~/.conf".into(),
                mode: "0644".into(),
                run_as: RunAs::TargetUser
            }
        );
        assert_eq!(s[1].reverse[0].kind, ReverseKind::RmFileUser);
        assert_eq!(s[2].venue, Venue::Skip);
        assert!(s[2]
            .skip
            .as_ref()
            .unwrap()
            .reason
            .contains("`bin/ov` is not in the layer directory"));

        for bad in ["../secret", "/etc/shadow", "a/../../b"] {
            let err = lower_alone(
                one_task(
                    "c",
                    task(
                        TaskVerb::Copy {
                            src: bad.into(),
                            to: Some("/x".into()),
                        },
                        None,
                    ),
                ),
                &[],
            )
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    LowerError::UnsafeCopySource {
                        at: LayerAt { line: 7, .. },
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }

        let err = lower_alone(
            one_task(
                "c",
                task(
                    TaskVerb::Copy {
                        src: "d".into(),
                        to: Some("/x".into()),
                    },
                    None,
                ),
            ),
            &[("d/inner", "x")],
        )
        .unwrap_err();
        assert!(matches!(err, LowerError::CopySourceNotFile { .. }), "{err}");
    }

    #[test]
    fn relative_target_paths_are_refused() {
        for verb in [
            TaskVerb::Copy {
                src: "conf".into(),
                to: None,
            },
            TaskVerb::Mkdir {
                path: "data".into(),
            },
            TaskVerb::Write {
                path: "x.conf".into(),
                content: String::new(),
            },
            TaskVerb::Link {
                path: "bin/x".into(),
                target: "/opt/x".into(),
            },
        ] {
            let err = lower_alone(
                one_task("rel", task(verb, Some("${USER}"))),
                &[("conf", "x")],
            )
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    LowerError::RelativeTarget {
                        at: LayerAt { line: 7, .. },
                        ..
                    }
                ),
                "{err}"
            );
        }
        // A `copy:` whose `to:` is relative: the error names `to`, not the source.
        let err = lower_alone(
            one_task(
                "rel",
                task(
                    TaskVerb::Copy {
                        src: "conf".into(),
                        to: Some("etc/x.conf".into()),
                    },
                    None,
                ),
            ),
            &[("conf", "x")],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("`to` path `etc/x.conf` must be absolute"),
            "{err}"
        );
        // A relative link *target* is fine: it is resolved against the link's directory.
        assert!(lower_alone(
            one_task(
                "rel",
                task(
                    TaskVerb::Link {
                        path: "~/bin/x".into(),
                        target: "x-wrapper".into(),
                    },
                    Some("${USER}"),
                )
            ),
            &[]
        )
        .is_ok());
    }

    #[test]
    fn a_parent_dir_from_vars_is_refused_and_dots_are_normalised() {
        let lower_one = |verb: TaskVerb, uninstall: &[&str]| {
            let mut l = named("v");
            l.vars = vec![
                ("UP".into(), "/opt/app/..".into()),
                ("DIR".into(), "/opt/app/".into()),
            ];
            let mut t = task(verb, None);
            t.uninstall = uninstall.iter().map(|u| u.to_string()).collect();
            l.tasks = vec![t];
            lower_alone(l, &[])
        };
        let err = lower_one(
            TaskVerb::Write {
                path: "${UP}/etc/x".into(),
                content: String::new(),
            },
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&err, LowerError::ParentDirInTarget { at: LayerAt { line: 7, .. }, field: "write", path, resolved: Some(r), .. }
                if path == "/opt/app/../etc/x" && r == "/opt/etc/x"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("change the variable so the path reads `/opt/etc/x`"),
            "{err}"
        );
        let err = lower_one(
            download("https://example.org/x.tar.gz", Some("${DIR}")),
            &["${UP}/../bin/x"],
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                LowerError::ParentDirInTarget {
                    field: "uninstall",
                    ..
                }
            ),
            "{err}"
        );
        // `${DIR}/./y/` reads `/opt/app//./y/` and lowers to `/opt/app/y`.
        let plan = lower_one(
            TaskVerb::Mkdir {
                path: "${DIR}/./y/".into(),
            },
            &[],
        )
        .expect("lowers");
        let Action::Task { task, .. } = &plan.layers[0].steps[0].action else {
            panic!("{:?}", plan.layers[0].steps[0].action)
        };
        assert_eq!(
            task.verb,
            crate::plan::TaskVerb::Mkdir {
                path: "/opt/app/y".into()
            }
        );
    }

    #[cfg(unix)]
    #[test]
    fn copy_through_a_symlink_out_of_the_layer_is_rejected() {
        let mut fx = Fixture::new();
        let mut l = named("c");
        l.tasks = vec![task(
            TaskVerb::Copy {
                src: "link".into(),
                to: Some("/x".into()),
            },
            None,
        )];
        fx.add(l, &[]);
        let outside = fx.dir.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        std::os::unix::fs::symlink(&outside, fx.dir.path().join("layers/c/link")).unwrap();
        let err = fx.lower(ARCH, ALL, &["c"]).unwrap_err();
        assert!(matches!(err, LowerError::UnsafeCopySource { .. }), "{err}");
    }
}
