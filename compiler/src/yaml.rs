//! Stage `load`: the one module that talks to the YAML library (serde-saphyr); everything else
//! sees a located [`Node`] tree or a [`YamlError`] that always names file, line and column.
//!
//! Why a node tree instead of deriving `Deserialize` for the model: the layer format mixes fixed
//! keys with open-ended ones (package sections keyed by format or distro tag), and every
//! rejection must point at the offending key. Walking a tree of positioned nodes keeps each
//! check a few lines of plain Rust with an exact position, and keeps serde-saphyr's types out of
//! the rest of the crate (swapping the parser is a change to this file only).
//!
//! The rendering of [`YamlError`] is ours rather than the library's snippet renderer because
//! every stage (layer schema, project files) reports in one cargo-style format with a `help:`.
//!
//! Hardening: one document per call unless the caller asks for a stream, duplicate keys are
//! errors (reported with both positions), unknown tags are rejected, and a budget caps nodes,
//! aliases, depth and size so an alias bomb fails fast instead of eating memory.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

use crate::layer::Pos;

/// What went wrong, coarsely; lets callers and tests tell error classes apart without parsing
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    /// Not well-formed YAML (or a tag we refuse).
    Syntax,
    /// The same key twice in one mapping.
    DuplicateKey,
    /// More than one document where exactly one is expected.
    MultipleDocuments,
    /// A size, depth or alias budget was exceeded.
    Limit,
    /// A key the schema does not know.
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong YAML type (a list where a string belongs, …).
    WrongType,
    /// A value of the right type that is still not acceptable (a bad mode, two task verbs, …).
    Invalid,
}

/// A located diagnostic about one YAML file: file, 1-based line and column, message, the source
/// line, and an optional hint. `Display` renders it in the rustc/cargo style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The file, as the caller named it.
    pub path: PathBuf,
    /// 1-based line; 0 when the position is unknown.
    pub line: u32,
    /// 1-based column (in characters); 0 when unknown.
    pub column: u32,
    /// One-line, lowercase message with names in backticks.
    pub message: String,
    /// The text of the offending line (without its newline), when known.
    pub source_line: Option<String>,
    /// A suggestion shown as `= help: …`.
    pub hint: Option<String>,
    /// The error class.
    pub kind: YamlErrorKind,
}

impl YamlError {
    /// A diagnostic at `pos` in `text` (the contents of `path`).
    pub fn at(
        path: &Path,
        text: &str,
        pos: Pos,
        kind: YamlErrorKind,
        message: impl Into<String>,
    ) -> YamlError {
        YamlError {
            path: path.to_path_buf(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            source_line: source_line(text, pos.line),
            hint: None,
            kind,
        }
    }

    /// The same error with a `= help:` line.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> YamlError {
        self.hint = Some(hint.into());
        self
    }

    /// The position as a [`Pos`].
    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }
}

/// The longest source line shown; longer lines are cropped around the column.
const MAX_SHOWN: usize = 120;

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let message = printable(&self.message);
        if self.line == 0 {
            write!(f, "{path}: {message}")?;
        } else {
            write!(f, "{path}:{}:{}: {message}", self.line, self.column)?;
        }
        let gutter = " ".repeat(self.line.to_string().len());
        if let (Some(src), true) = (&self.source_line, self.line > 0) {
            let (shown, caret_at) = display_line(src, self.column);
            write!(f, "\n{gutter} |\n{} | {shown}\n{gutter} | ", self.line)?;
            write!(f, "{}^", " ".repeat(caret_at))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n{gutter} = help: {}", printable(hint))?;
        }
        Ok(())
    }
}

impl std::error::Error for YamlError {}

/// The most bytes a project or layer file may have (what [`read_utf8`] reads).
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// Read a project or layer file as text. A file that is not UTF-8 gets an error that says where
/// (line and column of the first bad byte) and what to do, rather than the bare "stream did not
/// contain valid UTF-8".
pub fn read_utf8(path: &std::path::Path) -> std::io::Result<String> {
    // A project file is written by hand: one of many MiB is a mistake or an attack, and reading
    // it (and quoting its lines in an error) would take that much memory several times over.
    let size = std::fs::metadata(path)?.len();
    if size > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{size} bytes, more than the {MAX_FILE_BYTES} a project or layer file may have; \
                 keep large content in files a layer copies"
            ),
        ));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(path)?, MAX_FILE_BYTES + 1),
        &mut bytes,
    )?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        // (it grew while read, or its size is not known beforehand: a pipe, a /proc file)
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("more than the {MAX_FILE_BYTES} bytes a project or layer file may have"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // (the bytes before it on its line are valid UTF-8: count characters, not bytes)
        let column = String::from_utf8_lossy(&good[start..]).chars().count() + 1;
        let byte = e.as_bytes()[good.len()];
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text: byte 0x{byte:02x} at line {line}, column {column}; save the file as UTF-8"
            ),
        )
    })
}

/// Messages quote keys and values from the file; control characters in them (escape
/// sequences, newlines) must not reach the terminal or break the one-line format.
fn printable(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Prepare a source line for display: tabs become 4 spaces, control characters become `�`
/// (layer files are untrusted; an escape sequence must not reach the terminal), and long lines
/// are cropped around the column. Returns the text and the caret's offset in it.
fn display_line(src: &str, column: u32) -> (String, usize) {
    let col = (column.max(1) - 1) as usize;
    let chars: Vec<char> = src.chars().collect();
    let (start, end) = if chars.len() <= MAX_SHOWN {
        (0, chars.len())
    } else {
        let start = col
            .saturating_sub(MAX_SHOWN / 2)
            .min(chars.len() - MAX_SHOWN);
        (start, start + MAX_SHOWN)
    };
    let mut out = String::new();
    let mut caret = 0;
    if start > 0 {
        out.push('…');
        caret += 1;
    }
    for (i, c) in chars[start..end].iter().enumerate() {
        let piece: Cow<str> = match c {
            '\t' => "    ".into(),
            c if c.is_control() => "\u{fffd}".into(),
            c => c.to_string().into(),
        };
        if start + i < col {
            caret += piece.chars().count();
        }
        out.push_str(&piece);
    }
    if end < chars.len() {
        out.push('…');
    }
    (out, caret)
}

/// Line `line` (1-based) of `text`, without its line ending.
fn source_line(text: &str, line: u32) -> Option<String> {
    if line == 0 {
        return None;
    }
    text.split('\n')
        .nth(line as usize - 1)
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
}

// ------------------------------------------------------------------------------------------
// The node tree

/// A YAML value with its position. Scalars keep their source spelling so a string field can
/// take `1`, `1.10`, `no` or `0755` exactly as written (YAML 1.2 would read them as numbers or
/// booleans; the original tool, like most users, meant the text).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Where the node stands (for mappings and sequences: their first entry).
    pub pos: Pos,
    /// For scalars: the text as written in the source (plain scalars) or the parsed string
    /// (quoted and block scalars). `None` for null, sequences and mappings.
    pub text: Option<String>,
    /// Byte range of the defining occurrence, used to recover the spelling; filled during
    /// parsing, then no longer needed.
    span: Option<(usize, usize)>,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true`/`false` (and the YAML 1.1 spellings).
    Bool(bool),
    /// An integer.
    Int(i128),
    /// A float.
    Float(f64),
    /// A string (quoted, block, or a plain scalar that is not a number/bool/null).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The YAML type, as said in messages ("a string", "a list", …).
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The scalar as text (any scalar type), `None` for null and collections.
    pub fn scalar_text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// True for null.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The entries if this is a mapping.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The elements if this is a sequence.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The string if this is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value stored under `key` if this is a mapping with a string key `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .map(|(_, v)| v)
    }

    fn fill_text(&mut self, src: &str) {
        match &mut self.value {
            Value::Str(s) => self.text = Some(s.clone()),
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                // A non-string scalar is always plain, so its source bytes are its spelling.
                self.text = self
                    .span
                    .and_then(|(start, len)| src.get(start..start.checked_add(len)?))
                    .map(str::to_string)
                    .or_else(|| Some(fallback_text(&self.value)));
            }
            Value::Null => {}
            Value::Seq(items) => items.iter_mut().for_each(|n| n.fill_text(src)),
            Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.fill_text(src);
                v.fill_text(src);
            }),
        }
        self.span = None;
    }
}

fn fallback_text(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => x.to_string(),
        _ => String::new(),
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

struct RawValue(Value);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(RawValue)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<RawValue>::deserialize(d)?;
        let r = s.referenced;
        let span = s.defined.span();
        let span = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => usize::try_from(o).ok().zip(usize::try_from(l).ok()),
            _ => None,
        };
        Ok(Node {
            value: s.value.0,
            pos: Pos {
                line: u32::try_from(r.line()).unwrap_or(u32::MAX),
                column: u32::try_from(r.column()).unwrap_or(u32::MAX),
            },
            text: None,
            span,
        })
    }
}

// ------------------------------------------------------------------------------------------
// Entry points

/// Limits for untrusted input: generous for real configuration (the whole corpus is far below
/// them), small enough that a hostile file fails in milliseconds.
fn options(duplicates: serde_saphyr::DuplicateKeyPolicy) -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(8 * 1024 * 1024),
            max_events: 400_000,
            max_aliases: 2_000,
            max_anchors: 2_000,
            max_depth: 48,
            max_documents: 64,
            max_nodes: 200_000,
            max_total_scalar_bytes: 16 * 1024 * 1024,
            max_merge_keys: 1_000,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 100_000,
            max_replay_stack_depth: 16,
        },
        duplicate_keys: duplicates,
        reject_unsupported_tags: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    }
}

/// Deserialize one YAML document of `text` (the contents of `path`) into `T`. Duplicate keys,
/// several documents and unknown tags are errors.
pub fn from_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options(serde_saphyr::DuplicateKeyPolicy::Error))
        .map_err(|e| convert(path, text, &e))
}

/// Parse one YAML document into a located [`Node`] tree. An empty or comment-only file is a
/// `Null` node. More than one document, a duplicate key (reported at the second occurrence,
/// naming the first) or an exceeded budget is an error.
pub fn parse_node(path: &Path, text: &str) -> Result<Node, YamlError> {
    let mut node: Node = serde_saphyr::from_str_with_options(
        text,
        options(serde_saphyr::DuplicateKeyPolicy::PassThrough),
    )
    .map_err(|e| convert(path, text, &e))?;
    node.fill_text(text);
    check_duplicates(path, text, &node)?;
    Ok(node)
}

/// Parse a multi-document stream; empty documents are skipped.
pub fn parse_stream(path: &Path, text: &str) -> Result<Vec<Node>, YamlError> {
    let mut nodes: Vec<Node> = serde_saphyr::from_multiple_with_options(
        text,
        options(serde_saphyr::DuplicateKeyPolicy::PassThrough),
    )
    .map_err(|e| convert(path, text, &e))?;
    for node in &mut nodes {
        node.fill_text(text);
        check_duplicates(path, text, node)?;
    }
    Ok(nodes)
}

/// Reject a mapping that holds the same key twice (keys compared by their text). A hash map per
/// mapping keeps this linear: a hostile file may hold a mapping with 100k keys. Recursion is
/// bounded by the budget's depth limit.
fn check_duplicates(path: &Path, text: &str, node: &Node) -> Result<(), YamlError> {
    match &node.value {
        Value::Seq(items) => items
            .iter()
            .try_for_each(|n| check_duplicates(path, text, n)),
        Value::Map(entries) => {
            let mut seen: std::collections::HashMap<&str, Pos> =
                std::collections::HashMap::with_capacity(entries.len());
            for (k, v) in entries {
                if let Some(key) = k.scalar_text() {
                    if let Some(first) = seen.insert(key, k.pos) {
                        return Err(YamlError::at(
                            path,
                            text,
                            k.pos,
                            YamlErrorKind::DuplicateKey,
                            format!("duplicate key `{key}`"),
                        )
                        .with_hint(format!(
                            "`{key}` is already set at line {}; a mapping may hold each key once",
                            first.line
                        )));
                    }
                }
                check_duplicates(path, text, k)?;
                check_duplicates(path, text, v)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Turn a serde-saphyr error into a [`YamlError`], with our own wording for the cases users
/// meet (the library's developer messages mention its API).
fn convert(path: &Path, text: &str, err: &serde_saphyr::Error) -> YamlError {
    // The outer error carries the use-site location; the innermost one says what happened.
    let loc = err.location();
    let mut inner = err.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let pos = loc
        .map(|l| Pos {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        })
        .unwrap_or_default();
    let (kind, message, hint): (YamlErrorKind, String, Option<String>) = match inner {
        serde_saphyr::Error::DuplicateMappingKey { key, .. } => (
            YamlErrorKind::DuplicateKey,
            match key {
                Some(k) => format!("duplicate key `{k}`"),
                None => "duplicate key".to_string(),
            },
            Some("a mapping may hold each key once".to_string()),
        ),
        serde_saphyr::Error::MultipleDocuments { .. } => (
            YamlErrorKind::MultipleDocuments,
            "more than one YAML document in this file".to_string(),
            Some("remove the `---` separator; this file holds a single document".to_string()),
        ),
        serde_saphyr::Error::Budget { breach, .. } => (
            YamlErrorKind::Limit,
            format!("file exceeds the parser's limits ({})", budget_name(breach)),
            Some("configuration files this large or deeply nested are not accepted".to_string()),
        ),
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. }
        | serde_saphyr::Error::AliasReplayCounterOverflow { .. } => (
            YamlErrorKind::Limit,
            "too many alias expansions".to_string(),
            Some("aliases (`*name`) may be used, but not to multiply the document".to_string()),
        ),
        other => {
            let msg = UserMessageFormatter.format_message(other).into_owned();
            (YamlErrorKind::Syntax, lowercase_first(&msg), None)
        }
    };
    let mut e = YamlError::at(path, text, pos, kind, message);
    e.hint = hint;
    e
}

fn budget_name(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    // The Debug form is `Nodes { nodes: 250001 }`; its first word names the limit.
    let dbg = format!("{breach:?}");
    let name: String = dbg
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        // Keep acronyms such as `YAML` intact.
        Some(c) if !chars.clone().next().is_some_and(|n| n.is_uppercase()) => {
            c.to_lowercase().chain(chars).collect()
        }
        _ => s.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Typed access with located errors

/// A file being read: its path and text, so every accessor can build a located error.
#[derive(Debug, Clone, Copy)]
pub struct Doc<'a> {
    /// The file, as the caller names it in messages.
    pub path: &'a Path,
    /// Its contents.
    pub text: &'a str,
}

impl<'a> Doc<'a> {
    /// A document view over `text` read from `path`.
    pub fn new(path: &'a Path, text: &'a str) -> Doc<'a> {
        Doc { path, text }
    }

    /// An error at `pos`.
    pub fn error(&self, pos: Pos, kind: YamlErrorKind, message: impl Into<String>) -> YamlError {
        YamlError::at(self.path, self.text, pos, kind, message)
    }

    /// "expected X for `what`, found Y".
    pub fn wrong_type(&self, node: &Node, expected: &str, what: &str) -> YamlError {
        self.error(
            node.pos,
            YamlErrorKind::WrongType,
            format!(
                "expected {expected} for `{what}`, found {}",
                node.type_name()
            ),
        )
    }

    /// The entries of a mapping; null counts as an empty mapping.
    pub fn map<'n>(&self, node: &'n Node, what: &str) -> Result<&'n [(Node, Node)], YamlError> {
        match &node.value {
            Value::Map(m) => Ok(m),
            Value::Null => Ok(&[]),
            _ => Err(self.wrong_type(node, "a mapping", what)),
        }
    }

    /// The elements of a sequence; null counts as an empty sequence.
    pub fn seq<'n>(&self, node: &'n Node, what: &str) -> Result<&'n [Node], YamlError> {
        match &node.value {
            Value::Seq(s) => Ok(s),
            Value::Null => Ok(&[]),
            _ => Err(self.wrong_type(node, "a list", what)),
        }
    }

    /// A mapping key as a string (any scalar key, as written).
    pub fn key(&self, node: &Node, what: &str) -> Result<String, YamlError> {
        match node.scalar_text() {
            Some(s) if matches!(node.value, Value::Str(_)) || !s.is_empty() => Ok(s.to_string()),
            _ => Err(self.error(
                node.pos,
                YamlErrorKind::WrongType,
                format!(
                    "expected a text key in `{what}`, found {}",
                    node.type_name()
                ),
            )),
        }
    }

    /// Any scalar as a string, as written (`1` → "1", `no` → "no"); null and collections are
    /// errors.
    pub fn string(&self, node: &Node, what: &str) -> Result<String, YamlError> {
        node.scalar_text()
            .map(str::to_string)
            .ok_or_else(|| self.wrong_type(node, "a string", what))
    }

    /// Like [`Doc::string`], but null is `None`.
    pub fn opt_string(&self, node: &Node, what: &str) -> Result<Option<String>, YamlError> {
        if node.is_null() {
            Ok(None)
        } else {
            self.string(node, what).map(Some)
        }
    }

    /// A list of scalars as strings; null is an empty list.
    pub fn string_list(&self, node: &Node, what: &str) -> Result<Vec<String>, YamlError> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .map(|n| {
                    n.scalar_text()
                        .map(str::to_string)
                        .ok_or_else(|| self.wrong_type(n, "a string", &format!("{what}[]")))
                })
                .collect(),
            Value::Null => Ok(Vec::new()),
            _ => Err(self.wrong_type(node, "a list of strings", what)),
        }
    }

    /// A mapping of scalar keys to scalar values, both as strings, in file order; a null value
    /// is the empty string (as in the original's `map[string]string`).
    pub fn string_map(&self, node: &Node, what: &str) -> Result<Vec<(String, String)>, YamlError> {
        let mut out = Vec::new();
        for (k, v) in self.map(node, what)? {
            let key = self.key(k, what)?;
            let value = if v.is_null() {
                String::new()
            } else {
                self.string(v, &format!("{what}.{key}"))?
            };
            out.push((key, value));
        }
        Ok(out)
    }

    /// A boolean (YAML 1.1 spellings such as `yes` included).
    pub fn bool(&self, node: &Node, what: &str) -> Result<bool, YamlError> {
        match node.value {
            Value::Bool(b) => Ok(b),
            _ => Err(self.wrong_type(node, "`true` or `false`", what)),
        }
    }

    /// A non-negative integer that fits `T` (an unsigned integer type); the error says the range.
    pub fn uint<T: TryFrom<i128>>(&self, node: &Node, what: &str) -> Result<T, YamlError> {
        match node.value {
            Value::Int(i) => T::try_from(i).map_err(|_| {
                self.error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!(
                        "`{what}` is out of range: {i}; it must be from 0 to {}",
                        largest::<T>()
                    ),
                )
            }),
            _ => Err(self.wrong_type(node, "a whole number", what)),
        }
    }
}

/// The largest value of the unsigned integer type `T`, found by bisection (no std trait names
/// it; only an error message asks).
fn largest<T: TryFrom<i128>>() -> i128 {
    let (mut lo, mut hi) = (0i128, i128::MAX);
    while lo < hi {
        let mid = lo + (hi - lo) / 2 + 1;
        if T::try_from(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The closest candidate to `word` if it is close enough to be a likely typo.
pub fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let word_lc = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word_lc, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x.yml")
    }

    #[test]
    fn scalars_keep_their_spelling() {
        let n = parse_node(
            p(),
            "a: 1\nb: 1.10\nc: no\nd: 0755\ne: \"q\"\nf: &x 07\ng: *x\n",
        )
        .unwrap();
        let texts: Vec<_> = n
            .as_map()
            .unwrap()
            .iter()
            .map(|(_, v)| v.scalar_text().unwrap().to_string())
            .collect();
        assert_eq!(texts, ["1", "1.10", "no", "0755", "q", "07", "07"]);
        assert!(matches!(n.get("a").unwrap().value, Value::Int(1)));
        assert!(matches!(n.get("e").unwrap().value, Value::Str(_)));
    }

    #[test]
    fn positions_are_one_based() {
        let n = parse_node(p(), "layer:\n  name: x\n").unwrap();
        let (k, v) = &n.get("layer").unwrap().as_map().unwrap()[0];
        assert_eq!((k.pos.line, k.pos.column), (2, 3));
        assert_eq!((v.pos.line, v.pos.column), (2, 9));
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        let e = parse_node(p(), "a:\n  b: 1\n  c: 2\n  b: 3\n").unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::DuplicateKey);
        assert_eq!((e.line, e.column), (4, 3));
        assert!(e.hint.as_deref().unwrap().contains("line 2"), "{e}");
        let e = from_str::<serde_json::Value>(p(), "a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::DuplicateKey);
    }

    #[test]
    fn several_documents_are_refused_unless_a_stream_is_wanted() {
        let text = "a: 1\n---\nb: 2\n";
        let e = parse_node(p(), text).unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::MultipleDocuments);
        assert_eq!(e.line, 3);
        assert_eq!(parse_stream(p(), text).unwrap().len(), 2);
    }

    #[test]
    fn alias_bombs_hit_the_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let e = parse_node(p(), &text).unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::Limit, "{e}");
    }

    #[test]
    fn unknown_tags_and_syntax_errors_are_located() {
        let e = parse_node(p(), "a: !custom 1\n").unwrap_err();
        assert_eq!(e.kind, YamlErrorKind::Syntax);
        assert_eq!(e.line, 1);
        let e = parse_node(p(), "a: [1\nb: 2\n").unwrap_err();
        assert!(e.line >= 1 && e.source_line.is_some(), "{e}");
    }

    #[test]
    fn display_has_gutter_caret_and_help() {
        let text = "layer:\n  servics:\n";
        let e = YamlError::at(
            Path::new("layers/foo/layer.yml"),
            text,
            Pos { line: 2, column: 3 },
            YamlErrorKind::UnknownKey,
            "unknown key `servics` in `layer`",
        )
        .with_hint("did you mean `service`?");
        assert_eq!(
            e.to_string(),
            "layers/foo/layer.yml:2:3: unknown key `servics` in `layer`\n  |\n2 |   servics:\n  |   ^\n  = help: did you mean `service`?"
        );
    }

    #[test]
    fn display_neutralises_control_characters_and_tabs() {
        let e = YamlError::at(
            p(),
            "\tk: \u{1b}[31mred\n",
            Pos { line: 1, column: 2 },
            YamlErrorKind::Invalid,
            "m",
        );
        let s = e.to_string();
        assert!(!s.contains('\u{1b}') && !s.contains('\t'), "{s:?}");
        assert!(s.ends_with("\n  |     ^"), "{s:?}");
    }

    #[test]
    fn long_lines_are_cropped_around_the_column() {
        let line = format!("{}X{}", "a".repeat(300), "b".repeat(300));
        let e = YamlError::at(
            p(),
            &line,
            Pos {
                line: 1,
                column: 301,
            },
            YamlErrorKind::Invalid,
            "m",
        );
        let s = e.to_string();
        let shown = s.lines().nth(2).unwrap();
        let caret = s.lines().nth(3).unwrap();
        assert!(shown.chars().count() < 140);
        let idx = caret.chars().position(|c| c == '^').unwrap();
        assert_eq!(shown.chars().nth(idx), Some('X'), "{s}");
    }

    #[test]
    fn suggestions_pick_close_words_only() {
        let keys = ["service", "tasks", "env", "depends"];
        assert_eq!(suggest("servics", keys), Some("service"));
        assert_eq!(suggest("dependz", keys), Some("depends"));
        assert_eq!(suggest("zzz", keys), None);
    }
}
