//! Stage `render` (checks): the shape rules a value must meet before it becomes an argument of a
//! command on the target. Quoting already makes every value one inert shell word; these checks
//! close what quoting cannot: a word that a program would read as an *option* (`-oAPT::…`), a
//! newline that would start a new line in a repository or unit file, a relative path.

use super::RenderError;

/// Builds [`RenderError::Invalid`] for one layer.
pub(super) struct Checker<'a> {
    /// The layer the values come from (named in every error).
    pub layer: &'a str,
}

fn preview(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(60)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if value.chars().count() > 60 {
        out.push('…');
    }
    out
}

fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

impl Checker<'_> {
    /// The error for `value` in field `what`.
    pub fn invalid(&self, what: &str, value: &str, reason: &str) -> RenderError {
        RenderError::Invalid {
            layer: self.layer.to_string(),
            what: what.to_string(),
            value: preview(value),
            reason: reason.to_string(),
        }
    }

    /// A word given to a command as an operand (package, key, copr, module, member name): not
    /// empty, not an option, one line, no blanks.
    pub fn operand<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        if value.is_empty() {
            return Err(self.invalid(what, value, "is empty"));
        }
        if value.starts_with('-') {
            return Err(self.invalid(
                what,
                value,
                "starts with `-`, so the command would read it as an option",
            ));
        }
        if has_control(value) || value.chars().any(char::is_whitespace) {
            return Err(self.invalid(what, value, "contains blanks or control characters"));
        }
        Ok(value)
    }

    /// One blank-free word on one line, written into a file (a repository suite).
    pub fn word<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        if value.is_empty() || has_control(value) || value.chars().any(char::is_whitespace) {
            return Err(self.invalid(what, value, "must be one word without blanks"));
        }
        Ok(value)
    }

    /// An extra flag for a package manager: must be an option, on one line.
    pub fn option<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        if !value.starts_with('-') {
            return Err(self.invalid(what, value, "is not an option (it must start with `-`)"));
        }
        self.line(what, value)
    }

    /// Text written as (part of) one line of a file: no control characters.
    pub fn line<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        if has_control(value) {
            return Err(self.invalid(what, value, "contains a newline or control character"));
        }
        Ok(value)
    }

    /// A path on the target: absolute, or under the target user's home (`~/`, `${HOME}/`), on one
    /// line (run-time facts are recorded one path per line).
    pub fn path<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        self.line(what, value)?;
        let home_rooted = ["~", "${HOME}", "$HOME"].iter().any(|p| {
            value
                .strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        if !(value.starts_with('/') || home_rooted) {
            return Err(self.invalid(
                what,
                value,
                "is not an absolute path (start it with `/`, `~/` or `${HOME}/`)",
            ));
        }
        Ok(value)
    }

    /// A symlink target: any non-empty text on one line (it may be relative).
    pub fn link_target<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        if value.is_empty() {
            return Err(self.invalid(what, value, "is empty"));
        }
        self.line(what, value)
    }

    /// A download or repository URL: http(s) or ftp, no blanks or control characters.
    pub fn url<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        let lower = value.to_ascii_lowercase();
        if !["https://", "http://", "ftp://"]
            .iter()
            .any(|s| lower.starts_with(s))
        {
            return Err(self.invalid(what, value, "is not an http(s) or ftp URL"));
        }
        // The fixed run-time snippets (`$(rpm -E %fedora)`) become a variable, not text.
        let mut plain = value.to_string();
        for (snippet, _) in crate::shell::RUNTIME_SNIPPETS {
            plain = plain.replace(snippet, "");
        }
        if has_control(&plain) || plain.chars().any(char::is_whitespace) {
            return Err(self.invalid(what, value, "contains blanks or control characters"));
        }
        Ok(value)
    }

    /// An octal file mode such as `0644`.
    pub fn mode<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        let ok =
            (3..=4).contains(&value.len()) && value.bytes().all(|b| (b'0'..=b'7').contains(&b));
        if !ok {
            return Err(self.invalid(what, value, "is not an octal mode such as `0644`"));
        }
        Ok(value)
    }

    /// A name used in a file name or config section (repository, layer): letters, digits, `._+:@-`,
    /// starting with a letter or digit.
    pub fn name<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        let mut chars = value.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "._+:@-".contains(c));
        if !(first_ok && rest_ok) || value.contains("..") {
            return Err(self.invalid(
                what,
                value,
                "must be letters, digits and `._+:@-`, starting with a letter or digit",
            ));
        }
        Ok(value)
    }

    /// A systemd unit name (`foo.service`, `getty@tty1.service`).
    pub fn unit<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        let chars_ok = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c));
        let shape_ok = value.contains('.')
            && !value.starts_with(['-', '.'])
            && !value.ends_with('.')
            && value.len() <= 255;
        if !(chars_ok && shape_ok) {
            return Err(self.invalid(what, value, "is not a systemd unit name"));
        }
        Ok(value)
    }

    /// An environment variable name.
    pub fn ident<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        let mut chars = value.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !(first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            return Err(self.invalid(
                what,
                value,
                "is not a valid environment variable name (letters, digits, `_`, not starting with a digit)",
            ));
        }
        Ok(value)
    }

    /// An account name or `uid[:gid]` for ownership and `runuser`.
    pub fn account<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        let part_ok = |p: &str| {
            let mut chars = p.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || "_.-$".contains(c))
        };
        let ok = match value.split_once(':') {
            Some((user, group)) => part_ok(user) && part_ok(group),
            None => part_ok(value),
        };
        if !ok {
            return Err(self.invalid(what, value, "is not an account name or `uid[:gid]`"));
        }
        Ok(value)
    }

    /// A relative path inside the layer directory (payload): no `..`, not absolute, no empty or `.`
    /// components, one line.
    pub fn relative<'v>(&self, what: &str, value: &'v str) -> Result<&'v str, RenderError> {
        self.line(what, value)?;
        let ok = !value.is_empty()
            && !value.starts_with('/')
            && value
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok {
            return Err(self.invalid(
                what,
                value,
                "must be a relative path inside the layer directory, without `..`",
            ));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> Checker<'static> {
        Checker { layer: "l" }
    }

    #[test]
    fn operands_cannot_be_options_or_span_lines() {
        assert!(c().operand("package", "ripgrep").is_ok());
        assert!(c().operand("package", "libfoo:amd64=1.2+b1").is_ok());
        assert!(c()
            .operand("package", "-oAPT::Update::Pre-Invoke::=x")
            .is_err());
        assert!(c().operand("package", "a\nb").is_err());
        assert!(c().operand("package", "a b").is_err());
        assert!(c().operand("package", "").is_err());
    }

    #[test]
    fn paths_must_be_absolute_or_home_rooted() {
        for ok in ["/etc/x", "~/x", "~", "${HOME}/.config", "$HOME/a b"] {
            assert!(c().path("p", ok).is_ok(), "{ok}");
        }
        for bad in ["x", "", "./x", "~x", "${HOMEX}/a", "/a\nb", "$HOMEDIR/x"] {
            assert!(c().path("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_units_idents_modes() {
        assert!(c().name("n", "remi-modular").is_ok());
        assert!(c().name("n", "../etc").is_err());
        assert!(c().name("n", "a/b").is_err());
        assert!(c().unit("u", "ov-sway-sway.service").is_ok());
        assert!(c().unit("u", "sshd").is_err());
        assert!(c().unit("u", "a b.service").is_err());
        assert!(c().ident("k", "PATH_2").is_ok());
        assert!(c().ident("k", "2X").is_err());
        assert!(c().ident("k", "A-B").is_err());
        assert!(c().mode("m", "0755").is_ok());
        assert!(c().mode("m", "0855").is_err());
        assert!(c().mode("m", "+x").is_err());
        assert!(c().relative("s", "conf/a.conf").is_ok());
        assert!(c().relative("s", "../x").is_err());
        assert!(c().relative("s", "/etc/x").is_err());
        assert!(c().account("u", "1000:1000").is_ok());
        assert!(c().account("u", "-x").is_err());
    }

    #[test]
    fn errors_name_the_layer_and_show_the_value_on_one_line() {
        let e = c().operand("package", "-x\ny").unwrap_err().to_string();
        assert!(e.contains("layer `l`"), "{e}");
        assert!(e.contains("-x\\ny"), "{e}");
        assert!(!e.contains('\n'));
    }
}
