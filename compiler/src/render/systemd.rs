//! Stage `render` (systemd): `service:` entries → systemd unit files and drop-ins, as a list of
//! literal and run-time parts that `render` turns into one quoted shell word. Invariant: every
//! literal from a layer is escaped for the unit-file syntax it lands in (quoted words, C escapes,
//! `%` specifiers, `$` expansion), so no layer text can add a line or a directive.
//!
//! `exec:` strings are supervisord command lines, which supervisord splits with Python's `shlex`
//! (POSIX rules, no comments); the `shlex` crate treats `#` as a comment, so the splitter is a few
//! lines written here.

use crate::plan::ServiceEntry;
use crate::shell::{runtime_parts, RuntimePart};

use super::check::Checker;
use super::RenderError;

/// Where a translated value lands, which decides how its literal text is escaped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// A word of `ExecStart=` inside `"…"`: `$` is doubled (systemd would expand it), unknown
    /// `%(ENV_X)s` become `${X}` (expanded by systemd from the unit's environment).
    ExecWord,
    /// An `Environment="K=V"` value inside `"…"`: no `$` expansion there.
    EnvValue,
    /// An unquoted single-value setting (`WorkingDirectory=`, `Description=`): `%` doubled, no
    /// trailing backslash.
    Plain,
}

/// A unit file under construction: literal text plus run-time variables.
#[derive(Default)]
pub(super) struct UnitText {
    parts: Vec<RuntimePart>,
}

impl UnitText {
    fn lit(&mut self, s: &str) {
        if let Some(RuntimePart::Lit(last)) = self.parts.last_mut() {
            last.push_str(s);
        } else {
            self.parts.push(RuntimePart::Lit(s.to_string()));
        }
    }

    fn var(&mut self, v: &'static str) {
        self.parts.push(RuntimePart::Var(v));
    }

    /// The parts, for [`crate::shell::concat_word`].
    pub fn into_parts(self) -> Vec<RuntimePart> {
        self.parts
    }

    /// Append `value` translated for `ctx`.
    fn value(&mut self, value: &str, ctx: Ctx, tilde: bool) {
        for piece in translate(value, tilde) {
            match piece {
                Piece::Text(t) => self.lit(&escape(&t, ctx)),
                Piece::Var(v) => self.var(v),
                Piece::Env(name) if ctx == Ctx::ExecWord => self.lit(&format!("${{{name}}}")),
                Piece::Env(name) => self.lit(&escape(&format!("%(ENV_{name})s"), ctx)),
            }
        }
    }

    /// Append `"value"` (a quoted word).
    fn quoted(&mut self, value: &str, ctx: Ctx, tilde: bool) {
        self.lit("\"");
        self.value(value, ctx, tilde);
        self.lit("\"");
    }
}

enum Piece {
    Text(String),
    /// A run-time variable of the target (`OV_HOME`, …).
    Var(&'static str),
    /// `%(ENV_NAME)s` for a NAME that is not a run-time variable.
    Env(String),
}

/// Split `s` into text, the target's run-time values (`%(ENV_HOME)s`, `${HOME}`, `~/`, …) and other
/// supervisord `%(ENV_X)s` references.
fn translate(s: &str, tilde: bool) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut first = true;
    while !rest.is_empty() {
        let (chunk, env) = match rest.find("%(ENV_") {
            Some(i) => {
                let after = &rest[i + 6..];
                let len = after
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                if len > 0 && after[len..].starts_with(")s") {
                    (&rest[..i], Some((&after[..len], i + 6 + len + 2)))
                } else {
                    (&rest[..i + 6], None)
                }
            }
            None => (rest, None),
        };
        for part in runtime_parts(chunk, tilde && first) {
            match part {
                RuntimePart::Lit(t) => out.push(Piece::Text(t)),
                RuntimePart::Var(v) => out.push(Piece::Var(v)),
            }
        }
        first = false;
        match env {
            Some((name, consumed)) => {
                match crate::shell::RUNTIME_VARS.iter().find(|(n, _)| *n == name) {
                    Some((_, var)) => out.push(Piece::Var(var)),
                    None => out.push(Piece::Env(name.to_string())),
                }
                rest = &rest[consumed..];
            }
            None => rest = &rest[chunk.len()..],
        }
    }
    out
}

/// Escape literal text for `ctx`.
fn escape(s: &str, ctx: Ctx) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' if ctx == Ctx::ExecWord => out.push_str("$$"),
            '\\' if ctx != Ctx::Plain => out.push_str("\\\\"),
            '"' if ctx != Ctx::Plain => out.push_str("\\\""),
            '\n' if ctx != Ctx::Plain => out.push_str("\\n"),
            '\t' if ctx != Ctx::Plain => out.push_str("\\t"),
            c if c.is_control() && ctx != Ctx::Plain => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    if ctx == Ctx::Plain {
        while out.ends_with('\\') {
            out.pop();
        }
    }
    out
}

/// Split a supervisord `command=` line the way Python's `shlex.split` does (POSIX mode, no
/// comments): blanks separate words; `'…'` is literal; in `"…"` a backslash escapes only `"` and
/// `\`; outside quotes a backslash escapes any character.
pub(super) fn split_command(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.peek() {
                            Some('"') | Some('\\') => word.push(chars.next()?),
                            _ => word.push('\\'),
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// The shell that opens a service's `stdout:` file as the service's own account, then becomes
/// the program (`$1` the file, the program's words after it; `$` doubled for systemd).
const STDOUT_AS_ACCOUNT: &str = "exec >>\"$1\" 2>&1; shift; exec \"$@\"";

/// Append `ExecStart=` with the translated words of `exec`; with `stdout`, the program starts
/// through `/bin/sh`, which appends its output and errors to that file, opened as the service's
/// own account.
fn exec_start(
    unit: &mut UnitText,
    ck: &Checker<'_>,
    what: &str,
    exec: &str,
    stdout: Option<&str>,
) -> Result<(), RenderError> {
    let words = split_command(exec)
        .ok_or_else(|| ck.invalid(what, exec, "has an unclosed quote or a trailing backslash"))?;
    if words.is_empty() {
        return Err(ck.invalid(what, exec, "is empty"));
    }
    unit.lit("ExecStart=");
    if let Some(out) = stdout {
        unit.lit("\"/bin/sh\" \"-c\" ");
        unit.quoted(STDOUT_AS_ACCOUNT, Ctx::ExecWord, false);
        unit.lit(" \"ov-stdout\" ");
        unit.quoted(out, Ctx::ExecWord, false);
        unit.lit(" ");
    }
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            unit.lit(" ");
        }
        if word == ";" {
            // A lone `;` separates command lines in systemd; `\;` is the literal argument.
            unit.lit("\\;");
        } else {
            unit.quoted(word, Ctx::ExecWord, i == 0);
        }
    }
    unit.lit("\n");
    Ok(())
}

fn environment(
    unit: &mut UnitText,
    ck: &Checker<'_>,
    what: &str,
    env: &[(String, String)],
) -> Result<(), RenderError> {
    for (key, value) in env {
        ck.ident(what, key)?;
        unit.lit(&format!("Environment=\"{key}="));
        unit.value(value, Ctx::EnvValue, true);
        unit.lit("\"\n");
    }
    Ok(())
}

fn unit_list(
    unit: &mut UnitText,
    ck: &Checker<'_>,
    key: &str,
    what: &str,
    units: &[String],
) -> Result<(), RenderError> {
    if units.is_empty() {
        return Ok(());
    }
    for u in units {
        ck.unit(what, u)?;
    }
    unit.lit(&format!("{key}={}\n", units.join(" ")));
    Ok(())
}

/// `restart:` → `Restart=`; systemd has no `unless-stopped`, and a disabled unit stays stopped,
/// which is what `unless-stopped` means for a service.
fn restart(ck: &Checker<'_>, value: &str) -> Result<&'static str, RenderError> {
    match value {
        "no" | "false" => Ok("no"),
        "on-failure" => Ok("on-failure"),
        "always" | "true" | "unless-stopped" => Ok("always"),
        _ => Err(ck.invalid(
            "service `restart:`",
            value,
            "is not one of no, on-failure, always, unless-stopped",
        )),
    }
}

/// The unit file for a custom service.
pub(super) fn custom_unit(
    ck: &Checker<'_>,
    svc: &ServiceEntry,
    user_scope: bool,
) -> Result<UnitText, RenderError> {
    let mut u = UnitText::default();
    let exec = svc
        .exec
        .as_deref()
        .ok_or_else(|| ck.invalid("service", &svc.name, "is a custom service without `exec:`"))?;
    u.lit("# Generated by ov from layer ");
    u.lit(&escape(ck.layer, Ctx::Plain));
    u.lit("; changes are overwritten by the next deploy.\n[Unit]\nDescription=");
    u.lit(&escape(
        &format!("{} (ov layer {})", svc.name, ck.layer),
        Ctx::Plain,
    ));
    u.lit("\n");
    unit_list(&mut u, ck, "After", "service `after:`", &svc.after)?;
    unit_list(&mut u, ck, "Before", "service `before:`", &svc.before)?;
    let mut untranslated = Vec::new();
    for (key, value) in &svc.supervisord {
        match key.as_str() {
            "start_retries" if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() => {
                u.lit(&format!("StartLimitBurst={value}\n"));
            }
            _ => untranslated.push(key.as_str()),
        }
    }
    u.lit("\n[Service]\nType=simple\n");
    // `stdout:` as systemd's `StandardOutput=append:` is opened by systemd, as root, through
    // whatever links the way to it holds — and a service's log directory is often the service
    // account's own, so that account would choose which file of root's the output goes into.
    // A system unit that runs as another account opens it as that account instead.
    let runs_as_root = user_scope || matches!(svc.user.as_deref(), Some("root" | "0"));
    let stdout = match &svc.stdout {
        Some(out) if out.starts_with('/') => {
            ck.line("service `stdout:`", out)?;
            Some(out.as_str())
        }
        _ => None,
    };
    exec_start(
        &mut u,
        ck,
        "service `exec:`",
        exec,
        stdout.filter(|_| !runs_as_root),
    )?;
    environment(&mut u, ck, "service `env:` name", &svc.env)?;
    if let Some(dir) = &svc.working_directory {
        ck.line("service `working_directory:`", dir)?;
        // systemd refuses a unit whose WorkingDirectory= is not a normalized path.
        let normalized =
            !dir.contains("//") && dir.split('/').skip(1).all(|c| c != "." && c != "..");
        if !normalized {
            return Err(ck.invalid(
                "service `working_directory:`",
                dir,
                "is not a normalized path (no `.`, `..` or `//`)",
            ));
        }
        u.lit("WorkingDirectory=");
        u.value(dir, Ctx::Plain, true);
        u.lit("\n");
    }
    // A system unit runs as the deploy's user (the original ran these programs as the image's
    // user under supervisord) unless the layer asks for root or names another account. The
    // account is known only on the target: run.sh's `--user` resolved to OV_USER and its primary
    // group OV_GID, which `ov_plain_account` checks before the text is written. A user unit runs
    // in the user's own manager already.
    if !user_scope {
        match svc.user.as_deref() {
            Some("root" | "0") => {}
            None | Some("${USER}" | "$USER" | "%(ENV_USER)s") => {
                u.lit("User=");
                u.var("OV_USER");
                u.lit("\nGroup=");
                u.var("OV_GID");
                u.lit("\n");
            }
            Some(name) => {
                ck.account("service `user:`", name)?;
                u.lit(&format!("User={name}\n"));
            }
        }
    }
    if let Some(r) = &svc.restart {
        u.lit(&format!("Restart={}\n", restart(ck, r)?));
    }
    if let Some(t) = &svc.stop_timeout {
        let ok = !t.is_empty()
            && t.bytes().all(|b| b.is_ascii_alphanumeric())
            && t.as_bytes()[0].is_ascii_digit();
        if !ok {
            return Err(ck.invalid(
                "service `stop_timeout:`",
                t,
                "is not a duration such as `5`",
            ));
        }
        u.lit(&format!("TimeoutStopSec={t}\n"));
    }
    for (key, value) in &svc.supervisord {
        match key.as_str() {
            "stop_signal" => {
                let sig = value.trim_start_matches("SIG");
                if sig.is_empty() || !sig.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(ck.invalid(
                        "service `stop_signal:`",
                        value,
                        "is not a signal name",
                    ));
                }
                u.lit(&format!("KillSignal=SIG{}\n", sig.to_ascii_uppercase()));
            }
            "exit_codes" => {
                let codes: Vec<&str> = value.split([',', ' ']).filter(|c| !c.is_empty()).collect();
                if codes.is_empty() || !codes.iter().all(|c| c.bytes().all(|b| b.is_ascii_digit()))
                {
                    return Err(ck.invalid(
                        "service `exit_codes:`",
                        value,
                        "is not a list of numbers",
                    ));
                }
                u.lit(&format!("SuccessExitStatus={}\n", codes.join(" ")));
            }
            _ => {}
        }
    }
    if let Some(out) = stdout.filter(|_| runs_as_root) {
        u.lit("StandardOutput=append:");
        u.value(out, Ctx::Plain, false);
        u.lit("\n");
    }
    let skipped: Vec<&str> = untranslated
        .into_iter()
        .filter(|k| !["stop_signal", "exit_codes"].contains(k))
        .collect();
    if !skipped.is_empty() {
        u.lit("# supervisord settings with no systemd equivalent here: ");
        u.lit(&escape(&skipped.join(", "), Ctx::Plain));
        u.lit("\n");
    }
    u.lit("\n[Install]\nWantedBy=");
    u.lit(if user_scope {
        "default.target"
    } else {
        "multi-user.target"
    });
    u.lit("\n");
    Ok(u)
}

/// The drop-in for a packaged unit (`overrides:`, with the entry's `env:`), or `None` without
/// `overrides:`.
pub(super) fn packaged_dropin(
    ck: &Checker<'_>,
    svc: &ServiceEntry,
) -> Result<Option<UnitText>, RenderError> {
    // Only `overrides:` make a drop-in (that is what the plan's `remove-dropin` undoes); the
    // entry's own `env:` joins it then.
    let Some(ov) = svc.overrides.clone() else {
        return Ok(None);
    };
    let env: Vec<(String, String)> = svc.env.iter().chain(ov.env.iter()).cloned().collect();
    let mut u = UnitText::default();
    u.lit("# Generated by ov from layer ");
    u.lit(&escape(ck.layer, Ctx::Plain));
    u.lit("; changes are overwritten by the next deploy.\n");
    if !ov.after.is_empty() {
        u.lit("[Unit]\n");
        unit_list(&mut u, ck, "After", "service `overrides.after:`", &ov.after)?;
    }
    u.lit("[Service]\n");
    environment(&mut u, ck, "service `overrides.env:` name", &env)?;
    if let Some(exec) = &ov.exec {
        u.lit("ExecStart=\n");
        exec_start(&mut u, ck, "service `overrides.exec:`", exec, None)?;
    }
    Ok(Some(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(u: UnitText) -> String {
        u.into_parts()
            .into_iter()
            .map(|p| match p {
                RuntimePart::Lit(s) => s,
                RuntimePart::Var(v) => format!("<{v}>"),
            })
            .collect()
    }

    #[test]
    fn split_follows_python_shlex() {
        assert_eq!(
            split_command(r#"a 'b c' "d \"e\" \$f" g\ h #i"#).unwrap(),
            vec!["a", "b c", "d \"e\" \\$f", "g h", "#i"]
        );
        assert_eq!(split_command("x ''").unwrap(), vec!["x", ""]);
        assert!(split_command("a 'b").is_none());
        assert!(split_command("a\\").is_none());
    }

    /// A service's `stdout:` is opened by the account the service runs as: a system unit of
    /// another account's appends through a `/bin/sh` of that account (systemd would open
    /// `append:` as root, through the account's links); root's own and user units keep
    /// `StandardOutput=append:`.
    #[test]
    fn stdout_is_opened_by_the_account_the_service_runs_as() {
        let ck = Checker { layer: "web" };
        let svc = |user: Option<&str>| ServiceEntry {
            name: "web".into(),
            exec: Some("/usr/bin/python3 -m http.server 8099".into()),
            stdout: Some("/var/log/web/out.log".into()),
            user: user.map(str::to_string),
            ..Default::default()
        };
        let t = text(custom_unit(&ck, &svc(None), false).unwrap());
        assert!(
            t.contains(
                "ExecStart=\"/bin/sh\" \"-c\" \"exec >>\\\"$$1\\\" 2>&1; shift; exec \\\"$$@\\\"\" \"ov-stdout\" \"/var/log/web/out.log\" \"/usr/bin/python3\" \"-m\" \"http.server\" \"8099\"\n"
            ),
            "{t}"
        );
        assert!(!t.contains("StandardOutput="), "{t}");
        assert!(t.contains("User=<OV_USER>\n"), "{t}");
        for (user, user_scope) in [(Some("root"), false), (None, true)] {
            let t = text(custom_unit(&ck, &svc(user), user_scope).unwrap());
            assert!(t.contains("ExecStart=\"/usr/bin/python3\" \"-m\""), "{t}");
            assert!(
                t.contains("StandardOutput=append:/var/log/web/out.log\n"),
                "{t}"
            );
        }
    }

    #[test]
    fn exec_words_are_escaped_and_home_is_the_targets() {
        let ck = Checker { layer: "sway" };
        let svc = ServiceEntry {
            name: "sway".into(),
            exec: Some("%(ENV_HOME)s/bin/w '--x=\"$y\"' 100% %(ENV_DISPLAY)s ;".into()),
            env: vec![("A".into(), "1\n2 \"q\" $z %(ENV_HOME)s".into())],
            restart: Some("unless-stopped".into()),
            working_directory: Some("%(ENV_HOME)s/w".into()),
            ..Default::default()
        };
        let t = text(custom_unit(&ck, &svc, false).unwrap());
        assert!(
            t.contains(
                "ExecStart=\"<OV_HOME>/bin/w\" \"--x=\\\"$$y\\\"\" \"100%%\" \"${DISPLAY}\" \\;\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("Environment=\"A=1\\n2 \\\"q\\\" $z <OV_HOME>\"\n"),
            "{t}"
        );
        assert!(t.contains("WorkingDirectory=<OV_HOME>/w\n"), "{t}");
        assert!(t.contains("Restart=always\n"), "{t}");
        assert!(t.contains("WantedBy=multi-user.target"), "{t}");
    }

    #[test]
    fn system_units_run_as_the_deploy_user_unless_the_layer_says_otherwise() {
        let ck = Checker { layer: "l" };
        let mut svc = ServiceEntry {
            name: "s".into(),
            exec: Some("/bin/true".into()),
            ..Default::default()
        };
        let runs_as = |svc: &ServiceEntry, user_scope: bool| -> Vec<String> {
            text(custom_unit(&ck, svc, user_scope).unwrap())
                .lines()
                .filter(|l| l.starts_with("User=") || l.starts_with("Group="))
                .map(str::to_string)
                .collect()
        };
        // No `user:` and `${USER}` alike: the deploy's user and primary group, known on the target.
        let deploy_user = ["User=<OV_USER>", "Group=<OV_GID>"];
        assert_eq!(runs_as(&svc, false), deploy_user);
        for u in ["${USER}", "$USER", "%(ENV_USER)s"] {
            svc.user = Some(u.into());
            assert_eq!(runs_as(&svc, false), deploy_user, "{u}");
        }
        // Root only when asked for.
        for u in ["root", "0"] {
            svc.user = Some(u.into());
            assert!(runs_as(&svc, false).is_empty(), "{u}");
        }
        // Another account: that one (systemd takes its primary group).
        svc.user = Some("postgres".into());
        assert_eq!(runs_as(&svc, false), ["User=postgres"]);
        svc.user = Some("bad\nExecStartPre=/x".into());
        assert!(custom_unit(&ck, &svc, false).is_err());
        // A user unit runs in the user's own manager: no User= at all.
        svc.user = None;
        assert!(runs_as(&svc, true).is_empty());
        svc.user = Some("postgres".into());
        assert!(runs_as(&svc, true).is_empty());
    }

    #[test]
    fn bad_values_are_errors_naming_the_layer() {
        let ck = Checker { layer: "x" };
        let mut svc = ServiceEntry {
            name: "s".into(),
            exec: Some("a 'b".into()),
            ..Default::default()
        };
        assert!(custom_unit(&ck, &svc, false).is_err());
        svc.exec = Some("/bin/true".into());
        svc.env = vec![("A B".into(), "1".into())];
        let e = custom_unit(&ck, &svc, false).err().unwrap().to_string();
        assert!(e.contains("layer `x`"), "{e}");
        svc.env.clear();
        svc.after = vec!["a.service\nExecStartPre=/bin/evil".into()];
        assert!(custom_unit(&ck, &svc, false).is_err());
    }
}
