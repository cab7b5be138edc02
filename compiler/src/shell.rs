//! Stage `render` (quoting): the one place that turns a value into a shell word. Everything a
//! template interpolates passes through [`quote`] or [`runtime_word`]; both return a single word
//! that bash reads back as exactly the original text (plus, for `runtime_word`, the expansion of a
//! fixed set of run-time variables), so layer text can never become code.
//!
//! Quoting itself is delegated to `shlex` (a well-tested quoter); this module adds the NUL check
//! and the recognition of the run-time variables the layer format allows in path-like fields.

use thiserror::Error;

/// Why a value cannot become a shell word.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuoteError {
    /// Bash strings cannot hold NUL bytes; the value would be silently truncated.
    #[error("value contains a NUL byte, which no shell string can hold: {preview}")]
    Nul {
        /// The value up to the NUL, for the message.
        preview: String,
    },
}

/// Quote `s` as one shell word that bash reads back as exactly `s`.
///
/// Plain words (`ripgrep`, `/usr/bin/sway`, `0755`) stay unquoted for readability; anything with
/// a character bash treats specially is quoted by `shlex`; a value with a newline is one
/// single-quoted word. The empty string becomes `''`.
pub fn quote(s: &str) -> Result<String, QuoteError> {
    if s.contains('\0') {
        return Err(QuoteError::Nul {
            preview: s
                .split('\0')
                .next()
                .unwrap_or_default()
                .chars()
                .take(40)
                .collect(),
        });
    }
    if s.contains('\n') {
        // A multi-line value (file content, a unit file) becomes one single-quoted word, `'` as
        // `'\''`: the script then shows the text line by line, and no double-quoted string spans
        // lines (ShellCheck's SC1078 heuristics misread such strings in otherwise valid scripts).
        return Ok(format!("'{}'", s.replace('\'', "'\\''")));
    }
    // Safe: NUL was excluded above, which is the only input `try_quote` rejects.
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .map_err(|_| QuoteError::Nul {
            preview: s.chars().take(40).collect(),
        })
}

/// The run-time variables that may appear in path-like layer fields, and the shell variable each
/// one is read from on the target (exported by `run.sh`; see `docs/bundle-runtime.md`).
///
/// `HOME`, `USER`, `UID`, `GID` are the *target* account's, resolved with `getent passwd` on the
/// target; `BUILD_ARCH` is `uname -m`; `ARCH` is the container-style name (`amd64`, `arm64`).
pub const RUNTIME_VARS: &[(&str, &str)] = &[
    ("HOME", "OV_HOME"),
    ("USER", "OV_USER"),
    ("UID", "OV_UID"),
    ("GID", "OV_GID"),
    ("BUILD_ARCH", "BUILD_ARCH"),
    ("ARCH", "OV_ARCH"),
];

/// A fixed shell snippet some corpus layers embed in URLs (Fedora's release number), mapped to a
/// variable `lib.sh` computes once, so no layer text is ever evaluated.
pub const RUNTIME_SNIPPETS: &[(&str, &str)] = &[("$(rpm -E %fedora)", "OV_FEDORA_RELEASE")];

/// One piece of a value split by [`runtime_parts`]: literal text, or a run-time variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimePart {
    /// Text that must stay exactly as written.
    Lit(String),
    /// The target-side shell variable a run-time reference resolves to (e.g. `OV_HOME`).
    Var(&'static str),
}

/// Split `s` into literal text and the known run-time variables (`${HOME}`, `$HOME`, `${USER}`, …,
/// see [`RUNTIME_VARS`]). With `tilde` set, a leading `~` or `~/` is the target user's home.
pub fn runtime_parts(s: &str, tilde: bool) -> Vec<RuntimePart> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = s;
    if tilde && (rest == "~" || rest.starts_with("~/")) {
        parts.push(RuntimePart::Var("OV_HOME"));
        rest = &rest[1..];
    }
    while !rest.is_empty() {
        if let Some((len, var)) = match_runtime(rest) {
            if !literal.is_empty() {
                parts.push(RuntimePart::Lit(std::mem::take(&mut literal)));
            }
            parts.push(RuntimePart::Var(var));
            rest = &rest[len..];
        } else {
            let ch = rest.chars().next().unwrap_or_default();
            literal.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    if !literal.is_empty() {
        parts.push(RuntimePart::Lit(literal));
    }
    parts
}

/// Join parts into one shell word: literals quoted by [`quote`], variables as `"${NAME}"`.
///
/// Variable names come only from this crate (never from a layer), so the word is inert whatever
/// the literals hold. No parts at all make the empty word `''`.
pub fn concat_word(parts: &[RuntimePart]) -> Result<String, QuoteError> {
    let mut out = String::new();
    for part in parts {
        match part {
            RuntimePart::Lit(text) if text.is_empty() => {}
            RuntimePart::Lit(text) => out.push_str(&quote(text)?),
            RuntimePart::Var(var) => {
                out.push_str("\"${");
                out.push_str(var);
                out.push_str("}\"");
            }
        }
    }
    if out.is_empty() {
        out.push_str("''");
    }
    Ok(out)
}

/// Quote `s` as one shell word in which the known run-time variables (`${HOME}`, `$HOME`,
/// `${USER}`, …, see [`RUNTIME_VARS`]) expand on the target and everything else is literal.
///
/// With `tilde` set, a leading `~` or `~/` means the target user's home (path fields). Unknown
/// `${VAR}` references, command substitutions and globs stay literal text.
pub fn runtime_word(s: &str, tilde: bool) -> Result<String, QuoteError> {
    if s.contains('\0') {
        return quote(s);
    }
    concat_word(&runtime_parts(s, tilde))
}

/// Whether `s` mentions any run-time variable (so a value can be shown as "resolved on target").
pub fn has_runtime_vars(s: &str) -> bool {
    let mut rest = s;
    while !rest.is_empty() {
        if match_runtime(rest).is_some() {
            return true;
        }
        let ch = rest.chars().next().unwrap_or_default();
        rest = &rest[ch.len_utf8()..];
    }
    false
}

/// If `s` starts with a run-time variable reference, its length and the target variable.
fn match_runtime(s: &str) -> Option<(usize, &'static str)> {
    for (snippet, var) in RUNTIME_SNIPPETS {
        if s.starts_with(snippet) {
            return Some((snippet.len(), var));
        }
    }
    let body = s.strip_prefix('$')?;
    if let Some(braced) = body.strip_prefix('{') {
        let end = braced.find('}')?;
        let name = &braced[..end];
        let var = lookup(name)?;
        return Some((end + 3, var));
    }
    // `$NAME`: the longest identifier, which must be a known name in full (so `$HOMEDIR` is literal).
    let len = body
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let var = lookup(&body[..len])?;
    Some((len + 1, var))
}

fn lookup(name: &str) -> Option<&'static str> {
    RUNTIME_VARS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_readable_and_specials_are_quoted() {
        assert_eq!(quote("ripgrep").unwrap(), "ripgrep");
        assert_eq!(quote("/usr/bin/sway").unwrap(), "/usr/bin/sway");
        assert_eq!(quote("").unwrap(), "''");
        let q = quote("a b").unwrap();
        assert_ne!(q, "a b");
        assert!(quote("x\0y").is_err());
        assert_eq!(quote("it's\n\"$x\"").unwrap(), "'it'\\''s\n\"$x\"'");
    }

    #[test]
    fn runtime_word_expands_only_known_variables() {
        assert_eq!(
            runtime_word("${HOME}/.local/bin", true).unwrap(),
            "\"${OV_HOME}\"/.local/bin"
        );
        assert_eq!(
            runtime_word("~/.config", true).unwrap(),
            "\"${OV_HOME}\"/.config"
        );
        assert_eq!(runtime_word("~/.config", false).unwrap(), "'~/.config'");
        assert_eq!(
            runtime_word("$HOMEDIR/x", true).unwrap(),
            quote("$HOMEDIR/x").unwrap()
        );
        assert_eq!(
            runtime_word("${NOPE}", true).unwrap(),
            quote("${NOPE}").unwrap()
        );
        assert_eq!(
            runtime_word("uv-${BUILD_ARCH}.tgz", false).unwrap(),
            "uv-\"${BUILD_ARCH}\".tgz"
        );
    }
}
