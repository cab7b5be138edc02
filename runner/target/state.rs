//! Stage `runner`, per-machine state: `images["vm:<vm>"].vm_state` in `~/.config/ov/deploy.yml`.
//! Invariant: an update changes only the `vm_state` fields we own; every other byte of the file
//! (entries, unknown fields, comments, quoting, line endings) stays as it was; writes are atomic
//! (temp file in the same directory, then rename), mode 0600, under a lock.
//!
//! Written by hand because no maintained Rust YAML crate edits a document while keeping its
//! comments and layout: `edit` is a small block-mapping editor that locates keys by
//! indentation, and every edit is checked by re-parsing the result (serde-saphyr) and comparing
//! it with the original minus the fields we set. Flow-style mappings on the path are refused.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::exit::{Exit, HasExit};

/// What `ov` remembers about a VM between pushes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// Stable identity of the machine, kept across pushes (UUID v4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// SSH host (name or address) of the last successful push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host: Option<String>,
    /// SSH login user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// SSH port on 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Private key used to log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_path: Option<String>,
    /// The account the bundle's user-scope steps ran as (`--user`), whose ledger records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Time of the last successful push, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deploy: Option<String>,
    /// Layers the target's ledger records for this deploy, in install order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_layers: Option<Vec<String>>,
    /// sha256 of the last bundle pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_sha256: Option<String>,
}

impl VmState {
    /// The fields that are set, as (key, YAML value) in a fixed order.
    fn fields(&self) -> Vec<(&'static str, FieldValue)> {
        let mut v = Vec::new();
        let s = |x: &Option<String>| x.clone().map(FieldValue::Str);
        let pairs: [(&'static str, Option<FieldValue>); 9] = [
            ("instance_id", s(&self.instance_id)),
            ("ssh_host", s(&self.ssh_host)),
            ("ssh_user", s(&self.ssh_user)),
            ("ssh_port", self.ssh_port.map(|p| FieldValue::Int(p.into()))),
            ("ssh_key_path", s(&self.ssh_key_path)),
            ("user", s(&self.user)),
            ("last_deploy", s(&self.last_deploy)),
            (
                "applied_layers",
                self.applied_layers.clone().map(FieldValue::List),
            ),
            ("bundle_sha256", s(&self.bundle_sha256)),
        ];
        for (k, val) in pairs {
            if let Some(val) = val {
                v.push((k, val));
            }
        }
        v
    }
}

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O.
    #[error("cannot {what} `{path}`")]
    Io {
        /// What we tried.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("`{path}` is not valid YAML; fix or remove it: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The file uses a layout the editor does not change (flow style, …).
    #[error("cannot update `{key_path}` in `{path}`: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Dotted key path.
        key_path: String,
        /// Why.
        reason: String,
    },
    /// The edit did not produce what we meant (a bug; nothing was written).
    #[error(
        "refusing to write `{path}`: the edited file would not read back as intended ({reason})"
    )]
    Verify {
        /// The file.
        path: PathBuf,
        /// What differed.
        reason: String,
    },
}

impl HasExit for StateError {
    fn exit(&self) -> Exit {
        match self {
            StateError::Parse { .. } | StateError::Unsupported { .. } => Exit::InvalidInput,
            _ => Exit::Other,
        }
    }
}

fn parse_yaml(text: &str, path: &Path) -> Result<Value, StateError> {
    if text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    }) {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| StateError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read_text(path: &Path) -> Result<String, StateError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(StateError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The saved `vm_state` of entry `key` (e.g. `vm:arch`), if any.
pub fn load_vm_state(path: &Path, key: &str) -> Result<Option<VmState>, StateError> {
    let text = read_text(path)?;
    let doc = parse_yaml(&text, path)?;
    let Some(vs) = doc
        .get("images")
        .and_then(|i| i.get(key))
        .and_then(|e| e.get("vm_state"))
    else {
        return Ok(None);
    };
    if vs.is_null() {
        return Ok(Some(VmState::default()));
    }
    serde_json::from_value(vs.clone())
        .map(Some)
        .map_err(|e| StateError::Parse {
            path: path.to_path_buf(),
            message: format!("images.{key}.vm_state: {e}"),
        })
}

/// Set the given (`Some`) fields of `images[key].vm_state`, creating the entry (with
/// `target: vm` and `vm_source: <vm>`) or the file when absent. Other fields are kept.
pub fn save_vm_state(path: &Path, key: &str, vm: &str, update: &VmState) -> Result<(), StateError> {
    with_locked_file(path, |text| {
        let edited = edit::set_vm_state(text, key, vm, &update.fields(), path)?;
        verify_update(text, &edited, key, update, path)?;
        Ok(Some(edited))
    })
}

/// Remove entry `images[key]` entirely (`ov deploy del --purge`). Absent: nothing to do.
pub fn remove_entry(path: &Path, key: &str) -> Result<bool, StateError> {
    let mut removed = false;
    with_locked_file(path, |text| match edit::remove_entry(text, key, path)? {
        Some(edited) => {
            let before = parse_yaml(text, path)?;
            let after = parse_yaml(&edited, path)?;
            let mut expect = before.clone();
            if let Some(Value::Object(images)) = expect.get_mut("images") {
                images.remove(key);
            }
            if normalise(expect) != normalise(after) {
                return Err(StateError::Verify {
                    path: path.to_path_buf(),
                    reason: format!("removing `images.{key}` changed other entries"),
                });
            }
            removed = true;
            Ok(Some(edited))
        }
        None => Ok(None),
    })?;
    Ok(removed)
}

/// An empty `images:` reads back as null; treat both the same when comparing.
fn normalise(v: Value) -> Value {
    match v {
        Value::Object(mut m) => {
            if matches!(m.get("images"), Some(Value::Null)) {
                m.insert("images".into(), Value::Object(Default::default()));
            }
            Value::Object(m)
        }
        Value::Null => Value::Object(Default::default()),
        other => other,
    }
}

fn verify_update(
    before: &str,
    after: &str,
    key: &str,
    update: &VmState,
    path: &Path,
) -> Result<(), StateError> {
    let fail = |reason: String| StateError::Verify {
        path: path.to_path_buf(),
        reason,
    };
    let old = normalise(parse_yaml(before, path)?);
    let new = normalise(parse_yaml(after, path)?);
    let entry_new = new
        .get("images")
        .and_then(|i| i.get(key))
        .ok_or_else(|| fail(format!("`images.{key}` missing")))?;
    let vs_new = entry_new
        .get("vm_state")
        .ok_or_else(|| fail("`vm_state` missing".into()))?;
    let got: VmState =
        serde_json::from_value(vs_new.clone()).map_err(|e| fail(format!("vm_state: {e}")))?;
    for (k, _) in update.fields() {
        let same = match k {
            "instance_id" => got.instance_id == update.instance_id,
            "ssh_user" => got.ssh_user == update.ssh_user,
            "ssh_port" => got.ssh_port == update.ssh_port,
            "ssh_key_path" => got.ssh_key_path == update.ssh_key_path,
            "last_deploy" => got.last_deploy == update.last_deploy,
            "applied_layers" => got.applied_layers == update.applied_layers,
            "bundle_sha256" => got.bundle_sha256 == update.bundle_sha256,
            _ => true,
        };
        if !same {
            return Err(fail(format!("`{k}` reads back differently")));
        }
    }
    // Everything else must be unchanged: strip what we set from the new document (and what we
    // created) and compare with the old one.
    let mut stripped = new.clone();
    let old_entry = old.get("images").and_then(|i| i.get(key));
    if let Some(Value::Object(images)) = stripped.get_mut("images") {
        match old_entry {
            None => {
                images.remove(key);
            }
            Some(old_entry) => {
                if let Some(Value::Object(entry)) = images.get_mut(key) {
                    match old_entry.get("vm_state") {
                        None => {
                            entry.remove("vm_state");
                        }
                        Some(old_vs) => {
                            if let Some(vs) = entry.get_mut("vm_state") {
                                if let Value::Object(vs_map) = vs {
                                    for (k, _) in update.fields() {
                                        vs_map.remove(k);
                                    }
                                    if vs_map.is_empty() && !old_vs.is_object() {
                                        *vs = old_vs.clone();
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if old.get("images").is_none() {
        if let Value::Object(m) = &mut stripped {
            if m.get("images")
                .is_some_and(|i| i.as_object().is_some_and(|o| o.is_empty()))
            {
                m.remove("images");
            }
        }
    }
    let mut old_stripped = old.clone();
    if let Some(Value::Object(images)) = old_stripped.get_mut("images") {
        if let Some(Value::Object(entry)) = images.get_mut(key) {
            if let Some(Value::Object(vs)) = entry.get_mut("vm_state") {
                for (k, _) in update.fields() {
                    vs.remove(k);
                }
            }
        }
    }
    if normalise(stripped) != normalise(old_stripped) {
        return Err(fail("fields other than ours changed".into()));
    }
    Ok(())
}

/// Read-modify-write under `<dir>/.deploy.yml.lock`; `f` returns the new text (or `None` to
/// leave the file alone). The file and its directory are private (0600 / 0700).
fn with_locked_file(
    path: &Path,
    f: impl FnOnce(&str) -> Result<Option<String>, StateError>,
) -> Result<(), StateError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io {
            what,
            path: p,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create the directory of", path))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "deploy.yml".into());
    let lock_path = dir.join(format!(".{name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open lock file", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;

    let text = read_text(path)?;
    let Some(new_text) = f(&text)? else {
        return Ok(());
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(io("create a temporary file beside", path))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("set the mode of a temporary file beside", path))?;
    tmp.write_all(new_text.as_bytes())
        .map_err(io("write a temporary file beside", path))?;
    tmp.as_file()
        .sync_all()
        .map_err(io("sync a temporary file beside", path))?;
    tmp.persist(path).map_err(|e| StateError::Io {
        what: "replace",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    drop(lock);
    Ok(())
}

/// A value we write into `vm_state`.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Str(String),
    Int(i64),
    List(Vec<String>),
}

/// The line-based YAML block-mapping editor.
mod edit {
    use super::{FieldValue, StateError};
    use std::path::Path;

    /// One physical line, split into content and line ending.
    #[derive(Debug, Clone)]
    struct Line {
        text: String,
        eol: String,
    }

    struct Doc {
        lines: Vec<Line>,
        eol: String,
        /// The indentation step used for new nesting.
        step: usize,
        /// First line of the (only) document's content (after a `---` marker).
        start: usize,
    }

    impl Doc {
        fn parse(text: &str) -> Doc {
            let mut lines = Vec::new();
            for raw in text.split_inclusive('\n') {
                let (body, eol) = if let Some(b) = raw.strip_suffix("\r\n") {
                    (b, "\r\n")
                } else if let Some(b) = raw.strip_suffix('\n') {
                    (b, "\n")
                } else {
                    (raw, "")
                };
                lines.push(Line {
                    text: body.to_string(),
                    eol: eol.to_string(),
                });
            }
            let eol = if text.contains("\r\n") { "\r\n" } else { "\n" }.to_string();
            let start = lines
                .iter()
                .position(|l| !is_blank_or_comment(&l.text) && !l.text.starts_with('%'))
                .filter(|&i| lines[i].text.trim_end() == "---" || lines[i].text.starts_with("--- "))
                .map(|i| i + 1)
                .unwrap_or(0);
            let step = lines
                .iter()
                .filter(|l| !is_blank_or_comment(&l.text))
                .map(|l| indent_of(&l.text))
                .filter(|&n| n > 0)
                .min()
                .unwrap_or(2);
            Doc {
                lines,
                eol,
                step,
                start,
            }
        }

        fn render(&self) -> String {
            let mut s = String::new();
            for l in &self.lines {
                s.push_str(&l.text);
                s.push_str(&l.eol);
            }
            s
        }

        fn is_content(&self, i: usize) -> bool {
            !is_blank_or_comment(&self.lines[i].text)
        }

        fn is_doc_end(&self, i: usize) -> bool {
            let t = &self.lines[i].text;
            t == "---" || t.starts_with("--- ") || t == "..." || t.starts_with("... ")
        }

        /// End (exclusive) of the root content.
        fn root_end(&self) -> usize {
            (self.start..self.lines.len())
                .find(|&i| self.is_doc_end(i))
                .unwrap_or(self.lines.len())
        }

        /// End (exclusive) of the block of the key at line `k`: up to the next content line
        /// indented no deeper than the key, then back over trailing blank and comment lines
        /// (those belong to what follows).
        fn block_end(&self, k: usize, limit: usize) -> usize {
            let ind = indent_of(&self.lines[k].text);
            let mut end = limit;
            for i in k + 1..limit {
                if self.is_doc_end(i) {
                    end = i;
                    break;
                }
                if self.is_content(i) {
                    let t = &self.lines[i].text;
                    let n = indent_of(t);
                    // A block sequence may sit at its key's own indentation (`key:\n- a`).
                    let seq_item = n == ind && (t[n..].starts_with("- ") || &t[n..] == "-");
                    if n < ind || (n == ind && !seq_item) {
                        end = i;
                        break;
                    }
                }
            }
            while end > k + 1 && !self.is_content(end - 1) {
                end -= 1;
            }
            end
        }

        /// Children of a mapping whose lines are `from..to`: (indent, [(key, line)]).
        fn children(&self, from: usize, to: usize) -> Option<(usize, Vec<(String, usize)>)> {
            let first = (from..to).find(|&i| self.is_content(i))?;
            let ind = indent_of(&self.lines[first].text);
            let keys = (from..to)
                .filter(|&i| self.is_content(i) && indent_of(&self.lines[i].text) == ind)
                .filter_map(|i| parse_key(&self.lines[i].text[ind..]).map(|(k, _)| (k, i)))
                .collect();
            Some((ind, keys))
        }

        fn line(&self, text: String) -> Line {
            Line {
                text,
                eol: self.eol.clone(),
            }
        }

        /// Make sure the line before `at` ends with a newline (a file without a final one).
        fn terminate_before(&mut self, at: usize) {
            if at > 0 && self.lines[at - 1].eol.is_empty() {
                self.lines[at - 1].eol = self.eol.clone();
            }
        }

        fn insert(&mut self, at: usize, new: Vec<Line>) {
            self.terminate_before(at);
            self.lines.splice(at..at, new);
        }
    }

    fn is_blank_or_comment(s: &str) -> bool {
        let t = s.trim();
        t.is_empty() || t.starts_with('#')
    }

    fn indent_of(s: &str) -> usize {
        s.len() - s.trim_start_matches(' ').len()
    }

    /// `key: rest` → (key, rest without comment). Handles plain, "double" and 'single' keys.
    fn parse_key(s: &str) -> Option<(String, String)> {
        if s.starts_with("- ") || s == "-" || s.starts_with('?') {
            return None;
        }
        let (key, after) = if let Some(rest) = s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            out.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            });
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &rest[end?..])
        } else if let Some(rest) = s.strip_prefix('\'') {
            let mut out = String::new();
            let mut i = 0;
            let b = rest.as_bytes();
            let end = loop {
                if i >= b.len() {
                    return None;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        out.push('\'');
                        i += 2;
                        continue;
                    }
                    break i + 1;
                }
                let ch = rest[i..].chars().next()?;
                out.push(ch);
                i += ch.len_utf8();
            };
            (out, &rest[end..])
        } else {
            let bytes = s.as_bytes();
            let pos = (0..bytes.len()).find(|&i| {
                bytes[i] == b':'
                    && (i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t')
            })?;
            let key = s[..pos].trim_end();
            if key.is_empty() || key.contains(" #") {
                return None;
            }
            (key.to_string(), &s[pos..])
        };
        let after = after.trim_start();
        let rest = after.strip_prefix(':')?;
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
            return None;
        }
        Some((key, strip_comment(rest).trim().to_string()))
    }

    /// Drop a trailing ` # comment` (outside quotes).
    fn strip_comment(s: &str) -> &str {
        let mut in_s = false;
        let mut in_d = false;
        let b = s.as_bytes();
        for i in 0..b.len() {
            match b[i] {
                b'\'' if !in_d => in_s = !in_s,
                b'"' if !in_s => in_d = !in_d,
                b'#' if !in_s && !in_d && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') => {
                    return &s[..i];
                }
                _ => {}
            }
        }
        s
    }

    /// A scalar as YAML: plain when unambiguous, else double-quoted (JSON string syntax is a
    /// valid YAML double-quoted scalar).
    pub(super) fn scalar(s: &str) -> String {
        let plain_ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./@+-:".contains(c))
            && !s.starts_with(['-', ':', '.', '@'])
            && !s.ends_with(':')
            && !s.contains(": ")
            && s.parse::<f64>().is_err()
            && !matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~" | "y" | "n"
            )
            && !looks_like_time(s);
        if plain_ok {
            s.to_string()
        } else {
            serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
        }
    }

    /// YAML 1.1 readers turn `2025-01-01...` and `12:30` into timestamps/sexagesimals: quote.
    fn looks_like_time(s: &str) -> bool {
        let b = s.as_bytes();
        let date = b.len() >= 10
            && b[4] == b'-'
            && b[7] == b'-'
            && [0, 1, 2, 3, 5, 6, 8, 9]
                .iter()
                .all(|&i| b[i].is_ascii_digit());
        date || s
            .split(':')
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
    }

    fn render_field(ind: usize, step: usize, key: &str, v: &FieldValue) -> Vec<String> {
        let pad = " ".repeat(ind);
        match v {
            FieldValue::Str(s) => vec![format!("{pad}{key}: {}", scalar(s))],
            FieldValue::Int(n) => vec![format!("{pad}{key}: {n}")],
            FieldValue::List(items) if items.is_empty() => vec![format!("{pad}{key}: []")],
            FieldValue::List(items) => {
                let mut out = vec![format!("{pad}{key}:")];
                let item_pad = " ".repeat(ind + step);
                out.extend(items.iter().map(|i| format!("{item_pad}- {}", scalar(i))));
                out
            }
        }
    }

    /// Is the inline value on a key line an empty mapping (`{}`, `~`, `null`, nothing)?
    fn inline_is_empty(v: &str) -> bool {
        matches!(v, "" | "{}" | "~" | "null" | "Null" | "NULL")
    }

    fn unsupported(path: &Path, key_path: &str, reason: &str) -> StateError {
        StateError::Unsupported {
            path: path.to_path_buf(),
            key_path: key_path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Ensure mapping key `key` exists under the mapping spanning `from..to` whose own key line
    /// has indent `parent_ind` (`None`: the root); returns its line index. A missing key is
    /// appended at the end of the mapping with the lines `init` (relative, one level deeper).
    fn ensure_key(
        doc: &mut Doc,
        span: std::ops::Range<usize>,
        parent_ind: Option<usize>,
        key: &str,
        init: &[String],
        path: &Path,
        key_path: &str,
    ) -> Result<usize, StateError> {
        let (from, to) = (span.start, span.end);
        let (ind, keys) = match doc.children(from, to) {
            Some(c) => c,
            None => (parent_ind.map(|p| p + doc.step).unwrap_or(0), Vec::new()),
        };
        if parent_ind.is_some_and(|p| ind <= p) {
            return Err(unsupported(path, key_path, "unexpected indentation"));
        }
        if let Some((_, line)) = keys.iter().find(|(k, _)| k == key) {
            let line = *line;
            let (_, inline) = parse_key(&doc.lines[line].text[ind..])
                .ok_or_else(|| unsupported(path, key_path, "unreadable key line"))?;
            if !inline.is_empty() {
                if !inline_is_empty(&inline) {
                    return Err(unsupported(
                        path,
                        key_path,
                        "it is written in flow style or as a scalar; rewrite it as a block mapping",
                    ));
                }
                // `key: {}` → `key:` so children can follow.
                let pad = " ".repeat(ind);
                let raw_key = doc.lines[line].text[ind..]
                    .split_once(':')
                    .map(|_| key_token(&doc.lines[line].text[ind..]))
                    .unwrap_or_else(|| scalar(key));
                doc.lines[line].text = format!("{pad}{raw_key}:");
            }
            return Ok(line);
        }
        // Append after the mapping's last content line.
        let at = (from..to)
            .rev()
            .find(|&i| doc.is_content(i))
            .map(|i| i + 1)
            .unwrap_or(from);
        let pad = " ".repeat(ind);
        let mut new = vec![doc.line(format!("{pad}{}:", scalar(key)))];
        let inner = " ".repeat(ind + doc.step);
        new.extend(init.iter().map(|l| doc.line(format!("{inner}{l}"))));
        doc.insert(at, new);
        Ok(at)
    }

    /// The key as written on its line (keeps the user's quoting).
    fn key_token(s: &str) -> String {
        if s.starts_with('"') || s.starts_with('\'') {
            let q = s.as_bytes()[0];
            let mut i = 1;
            let b = s.as_bytes();
            while i < b.len() {
                if b[i] == b'\\' && q == b'"' {
                    i += 2;
                    continue;
                }
                if b[i] == q {
                    if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return s[..=i].to_string();
                }
                i += 1;
            }
            s.to_string()
        } else {
            let b = s.as_bytes();
            let pos = (0..b.len())
                .find(|&i| {
                    b[i] == b':' && (i + 1 == b.len() || b[i + 1] == b' ' || b[i + 1] == b'\t')
                })
                .unwrap_or(b.len());
            s[..pos].trim_end().to_string()
        }
    }

    fn check_root(doc: &Doc, path: &Path) -> Result<(), StateError> {
        let end = doc.root_end();
        if (end..doc.lines.len()).any(|i| doc.is_content(i) && !doc.is_doc_end(i)) {
            return Err(unsupported(
                path,
                "images",
                "the file holds several YAML documents",
            ));
        }
        if let Some(first) = (doc.start..end).find(|&i| doc.is_content(i)) {
            let t = &doc.lines[first].text;
            if indent_of(t) != 0 || parse_key(t).is_none() {
                return Err(unsupported(
                    path,
                    "images",
                    "the top level is not a block mapping",
                ));
            }
        }
        Ok(())
    }

    /// Set `images.<key>.vm_state.<field>` for every field.
    pub(super) fn set_vm_state(
        text: &str,
        key: &str,
        vm: &str,
        fields: &[(&'static str, FieldValue)],
        path: &Path,
    ) -> Result<String, StateError> {
        let mut doc = Doc::parse(text);
        check_root(&doc, path)?;

        let (start, end) = (doc.start, doc.root_end());
        let images = ensure_key(&mut doc, start..end, None, "images", &[], path, "images")?;
        let images_ind = indent_of(&doc.lines[images].text);

        let end = doc.root_end();
        let images_end = doc.block_end(images, end);
        let entry_path = format!("images.{key}");
        let init = [
            "target: vm".to_string(),
            format!("vm_source: {}", scalar(vm)),
        ];
        let entry = ensure_key(
            &mut doc,
            images + 1..images_end,
            Some(images_ind),
            key,
            &init,
            path,
            &entry_path,
        )?;
        let entry_ind = indent_of(&doc.lines[entry].text);

        let end = doc.root_end();
        let entry_end = doc.block_end(entry, end);
        let vs_path = format!("{entry_path}.vm_state");
        let vs = ensure_key(
            &mut doc,
            entry + 1..entry_end,
            Some(entry_ind),
            "vm_state",
            &[],
            path,
            &vs_path,
        )?;
        let vs_ind = indent_of(&doc.lines[vs].text);

        for (field, value) in fields {
            let end = doc.root_end();
            let vs_end = doc.block_end(vs, end);
            let (ind, keys) = doc
                .children(vs + 1, vs_end)
                .unwrap_or((vs_ind + doc.step, Vec::new()));
            if ind <= vs_ind {
                return Err(unsupported(path, &vs_path, "unexpected indentation"));
            }
            let rendered: Vec<Line> = render_field(ind, doc.step, field, value)
                .into_iter()
                .map(|t| doc.line(t))
                .collect();
            match keys.iter().find(|(k, _)| k == field) {
                Some((_, line)) => {
                    let line = *line;
                    let field_end = doc.block_end(line, vs_end);
                    // Keep a trailing comment on the key line of a scalar we replace.
                    let mut rendered = rendered;
                    if let FieldValue::Str(_) | FieldValue::Int(_) = value {
                        if let Some(c) = trailing_comment(&doc.lines[line].text) {
                            if let Some(first) = rendered.first_mut() {
                                first.text.push(' ');
                                first.text.push_str(c);
                            }
                        }
                    }
                    let last_eol = doc.lines[field_end - 1].eol.clone();
                    if let Some(last) = rendered.last_mut() {
                        if last_eol.is_empty() {
                            last.eol.clear();
                        }
                    }
                    doc.lines.splice(line..field_end, rendered);
                }
                None => {
                    let at = (vs + 1..vs_end)
                        .rev()
                        .find(|&i| doc.is_content(i))
                        .map(|i| i + 1)
                        .unwrap_or(vs + 1);
                    doc.insert(at, rendered);
                }
            }
        }
        Ok(doc.render())
    }

    fn trailing_comment(line: &str) -> Option<&str> {
        let ind = indent_of(line);
        let body = &line[ind..];
        let (_, _) = parse_key(body)?;
        let colon = body.find(':')?;
        let after = &body[colon + 1..];
        let stripped = strip_comment(after);
        if stripped.len() < after.len() {
            Some(after[stripped.len()..].trim())
        } else {
            None
        }
    }

    /// Remove `images.<key>`; `None` when it is not there.
    pub(super) fn remove_entry(
        text: &str,
        key: &str,
        path: &Path,
    ) -> Result<Option<String>, StateError> {
        let mut doc = Doc::parse(text);
        check_root(&doc, path)?;
        let end = doc.root_end();
        let Some((_, roots)) = doc.children(doc.start, end) else {
            return Ok(None);
        };
        let Some(&(_, images)) = roots.iter().find(|(k, _)| k == "images") else {
            return Ok(None);
        };
        let images_end = doc.block_end(images, end);
        let Some((_, entries)) = doc.children(images + 1, images_end) else {
            return Ok(None);
        };
        let Some(&(_, entry)) = entries.iter().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        let entry_end = doc.block_end(entry, images_end);
        doc.lines.drain(entry..entry_end);
        Ok(Some(doc.render()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keys() {
            assert_eq!(parse_key("vm:arch:"), Some(("vm:arch".into(), "".into())));
            assert_eq!(
                parse_key("\"vm:arch\": {} # c"),
                Some(("vm:arch".into(), "{}".into()))
            );
            assert_eq!(parse_key("'it''s': x"), Some(("it's".into(), "x".into())));
            assert_eq!(parse_key("- a: b"), None);
            assert_eq!(
                parse_key("url: http://x"),
                Some(("url".into(), "http://x".into()))
            );
            assert_eq!(key_token("'vm:a': 1"), "'vm:a'");
            assert_eq!(key_token("vm:a: 1"), "vm:a");
        }

        #[test]
        fn scalars() {
            assert_eq!(scalar("ovtest"), "ovtest");
            assert_eq!(scalar("/home/a b/k"), "\"/home/a b/k\"");
            assert_eq!(scalar("2026-01-01T00:00:00Z"), "\"2026-01-01T00:00:00Z\"");
            assert_eq!(scalar("yes"), "\"yes\"");
            assert_eq!(scalar("123"), "\"123\"");
            assert_eq!(scalar("12:30"), "\"12:30\"");
            assert_eq!(
                scalar("54701e2e-f1f2-46cb-9fa6-6ca5a18dda97"),
                "54701e2e-f1f2-46cb-9fa6-6ca5a18dda97"
            );
            assert_eq!(scalar("a\"b"), "\"a\\\"b\"");
        }
    }
}

/// RFC 3339 UTC timestamp (seconds) of now.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Every `images` key that has a `vm_state` (for listings).
pub fn list_states(path: &Path) -> Result<BTreeMap<String, VmState>, StateError> {
    let text = read_text(path)?;
    let doc = parse_yaml(&text, path)?;
    let mut out = BTreeMap::new();
    if let Some(Value::Object(images)) = doc.get("images") {
        for (k, v) in images {
            if let Some(vs) = v.get("vm_state") {
                if let Ok(s) = serde_json::from_value::<VmState>(vs.clone()) {
                    out.insert(k.clone(), s);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str) -> VmState {
        VmState {
            instance_id: Some(id.into()),
            ssh_host: Some("192.0.2.7".into()),
            ssh_user: Some("arch".into()),
            ssh_port: Some(2224),
            ssh_key_path: Some("/home/op/.local/share/ov/vm/ov-arch/id_ed25519".into()),
            user: Some("dev".into()),
            last_deploy: Some("2026-05-01T10:00:00Z".into()),
            applied_layers: Some(vec!["ripgrep".into(), "uv".into()]),
            bundle_sha256: Some("ab".repeat(32)),
        }
    }

    fn save(text: &str, key: &str, vm: &str, s: &VmState) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("deploy.yml");
        if !text.is_empty() {
            std::fs::write(&p, text).expect("write");
        }
        save_vm_state(&p, key, vm, s).expect("save");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let out = std::fs::read_to_string(&p).expect("read");
        assert_eq!(load_vm_state(&p, key).expect("load").as_ref(), Some(s));
        out
    }

    #[test]
    fn creates_the_file() {
        let out = save("", "vm:arch", "arch", &state("id-1"));
        assert_eq!(
            out,
            "images:\n  vm:arch:\n    target: vm\n    vm_source: arch\n    vm_state:\n      instance_id: id-1\n      ssh_host: 192.0.2.7\n      ssh_user: arch\n      ssh_port: 2224\n      ssh_key_path: /home/op/.local/share/ov/vm/ov-arch/id_ed25519\n      user: dev\n      last_deploy: \"2026-05-01T10:00:00Z\"\n      applied_layers:\n        - ripgrep\n        - uv\n      bundle_sha256: abababababababababababababababababababababababababababababababab\n"
        );
    }

    #[test]
    fn updates_only_our_fields() {
        let text = "# per-machine deploy state\nimages:\n    \"vm:arch\":   # quoted key, 4-space indent\n        target: vm\n        vm_state:\n            backend: auto      # written by ov vm create\n            ssh_port: 2200   # old port\n            applied_layers:\n            - old\n            key_injection_resolved: {smbios: true, cloud_init: true}\n        env: [A=1]\n    other:\n        target: host\n# trailing comment\n";
        let out = save(text, "vm:arch", "arch", &state("id-2"));
        let expected = "# per-machine deploy state\nimages:\n    \"vm:arch\":   # quoted key, 4-space indent\n        target: vm\n        vm_state:\n            backend: auto      # written by ov vm create\n            ssh_port: 2224 # old port\n            applied_layers:\n                - ripgrep\n                - uv\n            key_injection_resolved: {smbios: true, cloud_init: true}\n            instance_id: id-2\n            ssh_host: 192.0.2.7\n            ssh_user: arch\n            ssh_key_path: /home/op/.local/share/ov/vm/ov-arch/id_ed25519\n            user: dev\n            last_deploy: \"2026-05-01T10:00:00Z\"\n            bundle_sha256: abababababababababababababababababababababababababababababababab\n        env: [A=1]\n    other:\n        target: host\n# trailing comment\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn empty_flow_values_become_blocks_and_crlf_is_kept() {
        let text = "images: {}\r\nextra: 1\r\n";
        let out = save(
            text,
            "vm:x",
            "x",
            &VmState {
                instance_id: Some("i".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            out,
            "images:\r\n  vm:x:\r\n    target: vm\r\n    vm_source: x\r\n    vm_state:\r\n      instance_id: i\r\nextra: 1\r\n"
        );
    }

    #[test]
    fn refuses_flow_mappings_and_bad_yaml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("deploy.yml");
        std::fs::write(&p, "images: {vm:x: {target: vm}}\n").expect("write");
        let e = save_vm_state(&p, "vm:x", "x", &state("i")).expect_err("flow");
        assert!(matches!(e, StateError::Unsupported { .. }), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "images: {vm:x: {target: vm}}\n"
        );
        std::fs::write(&p, "images:\n  a: [\n").expect("write");
        let e = save_vm_state(&p, "vm:x", "x", &state("i")).expect_err("bad yaml");
        assert!(matches!(e, StateError::Parse { .. }), "{e}");
    }

    #[test]
    fn remove_entry_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("deploy.yml");
        let text = "images:\n  vm:a:\n    vm_state:\n      ssh_port: 1\n  # about b\n  vm:b:\n    target: vm\n";
        std::fs::write(&p, text).expect("write");
        assert!(remove_entry(&p, "vm:a").expect("remove"));
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "images:\n  # about b\n  vm:b:\n    target: vm\n"
        );
        assert!(!remove_entry(&p, "vm:zzz").expect("absent"));
    }

    #[test]
    fn no_final_newline() {
        let out = save(
            "images:\n  vm:a:\n    target: vm",
            "vm:a",
            "a",
            &VmState {
                ssh_port: Some(5),
                ..Default::default()
            },
        );
        assert_eq!(
            out,
            "images:\n  vm:a:\n    target: vm\n    vm_state:\n      ssh_port: 5\n"
        );
    }
}
