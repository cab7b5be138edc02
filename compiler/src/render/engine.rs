//! Stage `render`, the template engine: the embedded templates (optionally overridden from a
//! directory) with strict undefined variables and a formatter that shell-quotes every
//! interpolated value; only [`ShellFragment`]s, built by the reviewed filters, pass verbatim.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Object, Value};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::RenderError;
use crate::shell;

/// A value that is already a complete shell fragment and must be emitted verbatim.
///
/// Filters create it: `raw_shell` (a layer's `cmd:` body — the single reviewed path for raw layer
/// shell), `runtime_path`/`runtime_word` (whose output is built by [`shell`]) and `comment` (text
/// with every line break and control character replaced, for `#` comments); `render` also builds
/// some from [`shell::concat_word`] (unit files with run-time values).
#[derive(Debug)]
pub(super) struct ShellFragment(pub(super) String);

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
    /// The data templates of `emit/` (YAML, Markdown): their own formatter, see [`data_env`].
    data: Environment<'static>,
    /// Files of `templates/` that are not templates (not `.j2`), carried verbatim.
    texts: BTreeMap<String, String>,
    overridden: Vec<(String, String)>,
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
        // Templates cannot opt out of quoting: `safe` is gone (strict_env), and the formatter
        // below ignores both the auto-escape state (so `{% autoescape false %}` changes nothing)
        // and the "safe string" flag other filters may set.
        let mut env = strict_env();
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
        let mut texts = BTreeMap::new();
        let mut data = data_env();
        for (name, text) in sources {
            if !name.ends_with(".j2") {
                texts.insert(name, text);
                continue;
            }
            if is_data_template(&name) {
                data.add_template_owned(name.clone(), text)
                    .map_err(|source| RenderError::Template {
                        template: name,
                        source,
                    })?;
                continue;
            }
            env.add_template_owned(name.clone(), text)
                .map_err(|source| RenderError::Template {
                    template: name,
                    source,
                })?;
        }
        Ok(Engine {
            env,
            data,
            texts,
            overridden,
        })
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

    /// Render the data template `name` of `emit/` (YAML or Markdown, not shell) with `ctx`.
    pub fn render_data(&self, name: &str, ctx: &impl Serialize) -> Result<String, RenderError> {
        let wrap = |source| RenderError::Template {
            template: name.to_string(),
            source,
        };
        self.data
            .get_template(name)
            .map_err(wrap)?
            .render(ctx)
            .map_err(wrap)
    }

    /// The verbatim file `name` of `templates/` (one that is not a `.j2` template).
    pub fn text(&self, name: &str) -> Result<&str, RenderError> {
        self.texts
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| RenderError::UnknownText {
                name: name.to_string(),
            })
    }

    /// Templates replaced by the override directory, with the sha256 of each replacement.
    pub fn overridden(&self) -> &[(String, String)] {
        &self.overridden
    }

    /// The overrides that can change a bundle, which its manifest lists: all but the runner's own
    /// target-side scripts (`remote/`) and the hand-off files (`emit/`), which no bundle holds.
    pub fn overridden_in_bundle(&self) -> Vec<(String, String)> {
        self.overridden
            .iter()
            .filter(|(name, _)| !name.starts_with("remote/") && !name.starts_with("emit/"))
            .cloned()
            .collect()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("overridden", &self.overridden)
            .finish_non_exhaustive()
    }
}

/// The settings both engines share: a missing value is an error, whitespace as the templates
/// are written, and no `safe` filter (a value cannot opt out of its formatter's quoting).
fn strict_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.remove_filter("safe");
    env
}

/// Whether `name` is a data template of `emit/` (YAML, Markdown) rather than shell: those are
/// rendered by [`data_env`], whose formatter quotes for YAML, never for the shell.
fn is_data_template(name: &str) -> bool {
    name.starts_with("emit/") && !name.ends_with(".sh.j2")
}

/// The engine of the data templates: strict undefined variables, and a formatter that quotes
/// every value for where it lands — in `emit/ansible/*.yml.j2` a YAML double-quoted scalar tagged
/// `!unsafe` (Ansible never templates it), in other YAML a double-quoted scalar, in Markdown one
/// line of text. A value cannot opt out: `safe` is gone and no filter builds raw text.
fn data_env() -> Environment<'static> {
    let mut env = strict_env();
    env.set_formatter(|out, state, value| {
        if value.is_undefined() || value.is_none() {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::UndefinedError,
                "refusing to interpolate a missing value",
            ));
        }
        let name = state.name();
        let word = match value.kind() {
            minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Map => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "a list or map cannot be one value; iterate over it",
                ))
            }
            minijinja::value::ValueKind::Number | minijinja::value::ValueKind::Bool
                if name.ends_with(".yml.j2") =>
            {
                value.to_string()
            }
            _ => {
                let text = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string);
                if name.ends_with(".md.j2") {
                    text.chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect()
                } else if name.starts_with("emit/ansible/") {
                    format!("!unsafe {}", yaml_quote(&text))
                } else {
                    yaml_quote(&text)
                }
            }
        };
        out.write_str(&word).map_err(minijinja::Error::from)
    });
    env
}

/// `text` as a YAML double-quoted scalar that reads back as exactly `text` in YAML 1.1 and 1.2
/// (PyYAML, as Ansible and cloud-init use): printable ASCII as is but `"` and `\`, every other
/// character escaped (`\n`, `\t`, `\xXX`, `\uXXXX`, `\UXXXXXXXX`), so no line break, tab or
/// Unicode separator can end or fold it.
pub fn yaml_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn fragment(word: Result<String, shell::QuoteError>) -> Result<Value, minijinja::Error> {
    word.map(|w| Value::from_object(ShellFragment(w)))
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_with(src: &str) -> Environment<'static> {
        let mut e = Engine::new(None).expect("engine").env;
        e.add_template_owned("t", src.to_string())
            .expect("template");
        e
    }

    #[test]
    fn every_step_template_has_its_check_twin_and_no_check_calls_a_writing_helper() {
        use crate::templates::EMBEDDED;
        let names: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
        for (name, _) in EMBEDDED {
            let Some(kind) = name.strip_prefix("steps/") else {
                continue;
            };
            if ["header.sh.j2", "step.sh.j2", "skipped.sh.j2", "undo.sh.j2"].contains(&kind) {
                continue;
            }
            assert!(
                names.contains(&format!("check/{kind}").as_str()),
                "steps/{kind} has no check/{kind}: `run.sh --check` could not look at the step"
            );
        }
        // A check only looks: every command in a check template is a check helper (or `:`).
        for (name, text) in EMBEDDED.iter().filter(|(n, _)| n.starts_with("check/")) {
            for line in text.lines().map(str::trim) {
                let first = line.split_whitespace().next().unwrap_or("");
                let allowed = first.is_empty()
                    || first.starts_with('#')
                    || first.starts_with("{%")
                    || first.starts_with("ov_check_")
                    || [
                        "ov_plain_account",
                        ":",
                        "set",
                        "exec",
                        "OV_CHECK_CHANGES=0",
                        "if",
                        "exit",
                        "[",
                        "e",
                        "p",
                    ]
                    .contains(&first)
                    || first.starts_with("OV_CHECK_WHAT=")
                    || first == "{{";
                assert!(allowed, "{name}: `{line}` is not a check helper");
            }
        }
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
    fn files_that_are_not_templates_are_carried_verbatim_and_can_be_overridden() {
        let engine = Engine::new(None).expect("engine");
        let lib = engine.text("lib/steps.sh").expect("embedded");
        assert_eq!(lib, include_str!("../../../templates/lib/steps.sh"));
        assert!(
            lib.contains("${#"),
            "bash syntax the template engine would refuse"
        );
        assert!(
            engine.render("lib/steps.sh", &()).is_err(),
            "not a template"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/steps.sh"), "{{ not a template }}\n").unwrap();
        let engine = Engine::new(Some(dir.path())).expect("engine with override");
        assert_eq!(
            engine.text("lib/steps.sh").unwrap(),
            "{{ not a template }}\n"
        );
        assert_eq!(engine.overridden()[0].0, "lib/steps.sh");
    }

    #[test]
    fn a_bundle_lists_only_the_overrides_it_can_hold() {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in [
            ("lib/steps.sh", "# mine\n"),
            ("remote/enter.sh.j2", "echo enter\n"),
        ] {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let engine = Engine::new(Some(dir.path())).expect("engine with overrides");
        let all: Vec<&str> = engine
            .overridden()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(all, ["lib/steps.sh", "remote/enter.sh.j2"]);
        let in_bundle: Vec<String> = engine
            .overridden_in_bundle()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(in_bundle, ["lib/steps.sh"]);
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
