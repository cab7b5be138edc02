//! Stage `lower`: the layer model's entries → the plan's own types, field for field; the only
//! place that knows both, so a change to either shows up here.

use crate::layer;
use crate::plan;

impl From<&layer::Pos> for plan::Pos {
    fn from(p: &layer::Pos) -> plan::Pos {
        plan::Pos {
            line: p.line,
            column: p.column,
        }
    }
}

impl From<&layer::Repo> for plan::Repo {
    fn from(r: &layer::Repo) -> plan::Repo {
        let r = r.clone();
        plan::Repo {
            name: r.name,
            url: r.url,
            gpgkey: r.gpgkey,
            gpgcheck: r.gpgcheck,
            rpm: r.rpm,
            key: r.key,
            signed_by: r.signed_by,
            suite: r.suite,
            components: r.components,
            ppa: r.ppa,
            server: r.server,
            siglevel: r.siglevel,
        }
    }
}

impl From<&layer::Task> for plan::Task {
    fn from(t: &layer::Task) -> plan::Task {
        plan::Task {
            verb: plan::TaskVerb::from(&t.verb),
            user: t.user.clone(),
            mode: t.mode.clone(),
            env: t.env.clone(),
            comment: t.comment.clone(),
            uninstall: t.uninstall.clone(),
            pos: plan::Pos::from(&t.pos),
        }
    }
}

impl From<&layer::TaskVerb> for plan::TaskVerb {
    fn from(v: &layer::TaskVerb) -> plan::TaskVerb {
        use layer::TaskVerb as L;
        use plan::TaskVerb as P;
        match v.clone() {
            L::Cmd { body } => P::Cmd { body },
            L::Mkdir { path } => P::Mkdir { path },
            L::Copy { src, to } => P::Copy { src, to },
            L::Write { path, content } => P::Write { path, content },
            L::Link { path, target } => P::Link { path, target },
            L::Download {
                url,
                to,
                extract,
                include,
                strip_components,
            } => P::Download {
                url,
                to,
                extract,
                include,
                strip_components,
            },
            L::Setcap { path, caps } => P::Setcap { path, caps },
            L::Build { what } => P::Build { what },
        }
    }
}

impl From<&layer::ServiceEntry> for plan::ServiceEntry {
    fn from(s: &layer::ServiceEntry) -> plan::ServiceEntry {
        plan::ServiceEntry {
            name: s.name.clone(),
            use_packaged: s.use_packaged.clone(),
            exec: s.exec.clone(),
            env: s.env.clone(),
            restart: s.restart.clone(),
            working_directory: s.working_directory.clone(),
            user: s.user.clone(),
            after: s.after.clone(),
            before: s.before.clone(),
            stdout: s.stdout.clone(),
            stop_timeout: s.stop_timeout.clone(),
            scope: match s.scope {
                layer::ServiceScope::System => plan::ServiceScope::System,
                layer::ServiceScope::User => plan::ServiceScope::User,
            },
            enable: s.enable,
            overrides: s.overrides.as_ref().map(|o| plan::ServiceOverrides {
                env: o.env.clone(),
                after: o.after.clone(),
                exec: o.exec.clone(),
            }),
            supervisord: s.supervisord.clone(),
            pos: plan::Pos::from(&s.pos),
        }
    }
}
