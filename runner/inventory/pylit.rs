//! Stage `inventory`, INI values: the two pieces of Python an Ansible INI inventory leans on —
//! POSIX `shlex` splitting of a host line (with `#` comments) and `ast.literal_eval` of a value —
//! re-done in Rust so a static inventory reads the same without Ansible installed.
//! Invariant: pure functions of their input; whatever Python would reject as a literal comes
//! back as `None` (the caller keeps the text as a string, as Ansible does), never a panic.

use serde_json::{Map, Number, Value};

/// Split `line` like Python's `shlex.split(line, comments=True)` (POSIX mode): whitespace
/// separates words, `'…'` is literal, `"…"` honours `\"` and `\\`, a backslash outside quotes
/// escapes the next character, and `#` outside quotes ends the line (also inside a word, as
/// shlex does). `Err` carries the column (1-based, in characters) of an unclosed quote.
pub fn shlex_split(line: &str) -> Result<Vec<String>, usize> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, ch)) => word.push(ch),
                        None => return Err(i + 1),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some((_, n @ ('"' | '\\'))) => {
                                word.push(*n);
                                chars.next();
                            }
                            Some(_) => word.push('\\'),
                            None => return Err(i + 1),
                        },
                        Some((_, ch)) => word.push(ch),
                        None => return Err(i + 1),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some((_, n)) => word.push(n),
                    None => return Err(i + 1),
                }
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
    Ok(words)
}

/// The value of `text` as Python's `ast.literal_eval` reads it, converted as Ansible's INI
/// plugin converts it (tuples and sets become lists, complex numbers and `...` their text), or
/// `None` when `text` is not a literal (then Ansible keeps the text). Trailing whitespace and a
/// `#` comment are allowed, as in Python source.
pub fn literal(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        text,
    };
    p.skip_space();
    let v = p.value(0)?;
    p.skip_space();
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

/// Nesting deeper than this is refused (Python's own parser gives up at a similar depth).
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Spaces, tabs and a comment running to the end (the value is a single line).
    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\x0c' => self.i += 1,
                b'#' => self.i = self.s.len(),
                _ => break,
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_space();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_space();
        let first = self.string_or_atom(depth)?;
        // Adjacent string literals concatenate (`'a' 'b'` is `'ab'`).
        if let Value::String(mut s) = first {
            loop {
                self.skip_space();
                match self.peek() {
                    Some(b'\'' | b'"') => s.push_str(&self.string()?),
                    Some(b'r' | b'R' | b'u' | b'U')
                        if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) =>
                    {
                        match self.string_or_atom(depth)? {
                            Value::String(t) => s.push_str(&t),
                            _ => return None,
                        }
                    }
                    _ => break,
                }
            }
            return Some(Value::String(s));
        }
        Some(first)
    }

    fn string_or_atom(&mut self, depth: usize) -> Option<Value> {
        match self.peek()? {
            b'\'' | b'"' => self.string().map(Value::String),
            b'[' => {
                self.i += 1;
                self.sequence(b']', depth).map(Value::Array)
            }
            b'(' => {
                self.i += 1;
                // `(x)` is x; `(x,)` and `(x, y)` are tuples (lists for Ansible).
                if self.eat(b')') {
                    return Some(Value::Array(Vec::new()));
                }
                let v = self.value(depth + 1)?;
                if self.eat(b')') {
                    return Some(v);
                }
                if !self.eat(b',') {
                    return None;
                }
                let mut items = vec![v];
                items.extend(self.sequence(b')', depth)?);
                Some(Value::Array(items))
            }
            b'{' => {
                self.i += 1;
                self.mapping_or_set(depth)
            }
            b'r' | b'R' | b'u' | b'U' if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) => {
                let raw = matches!(self.peek(), Some(b'r' | b'R'));
                self.i += 1;
                if raw {
                    self.raw_string().map(Value::String)
                } else {
                    self.string().map(Value::String)
                }
            }
            b'-' | b'+' => {
                let neg = self.peek() == Some(b'-');
                self.i += 1;
                self.skip_space();
                match self.number()? {
                    Num::Int(n) => {
                        let n = if neg { n.checked_neg()? } else { n };
                        Some(int_value(n))
                    }
                    Num::Float(x) => float_value(if neg { -x } else { x }),
                    Num::Imaginary(t) => Some(Value::String(format!(
                        "{}{}",
                        if neg { "-" } else { "" },
                        t
                    ))),
                }
            }
            b'0'..=b'9' | b'.' => {
                let start = self.i;
                match self.number()? {
                    Num::Int(n) => Some(int_value(n)),
                    Num::Float(x) => float_value(x),
                    Num::Imaginary(_) => Some(Value::String(self.text[start..self.i].to_string())),
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
                    self.i += 1;
                }
                match &self.text[start..self.i] {
                    "True" => Some(Value::Bool(true)),
                    "False" => Some(Value::Bool(false)),
                    "None" => Some(Value::Null),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Items up to `close`, separated by commas (a trailing comma allowed).
    fn sequence(&mut self, close: u8, depth: usize) -> Option<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Some(items);
            }
            items.push(self.value(depth + 1)?);
            if self.eat(close) {
                return Some(items);
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn mapping_or_set(&mut self, depth: usize) -> Option<Value> {
        if self.eat(b'}') {
            return Some(Value::Object(Map::new()));
        }
        let first = self.value(depth + 1)?;
        if self.eat(b':') {
            let mut map = Map::new();
            let v = self.value(depth + 1)?;
            map.insert(key_text(first)?, v);
            loop {
                if self.eat(b'}') {
                    return Some(Value::Object(map));
                }
                if !self.eat(b',') {
                    return None;
                }
                if self.eat(b'}') {
                    return Some(Value::Object(map));
                }
                let k = self.value(depth + 1)?;
                if !self.eat(b':') {
                    return None;
                }
                let v = self.value(depth + 1)?;
                map.insert(key_text(k)?, v);
            }
        }
        // A set: Ansible turns it into a list (order is Python's; only one-element sets keep
        // a predictable order, so larger sets are left as text rather than guessed).
        let mut items = vec![first];
        if !self.eat(b'}') {
            if !self.eat(b',') {
                return None;
            }
            items.extend(self.sequence(b'}', depth)?);
        }
        (items.len() == 1).then_some(Value::Array(items))
    }

    fn string(&mut self) -> Option<String> {
        let q = self.peek()?;
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.next_char()?;
            match c {
                c if c as u32 == q as u32 => return Some(out),
                '\\' => {
                    let e = self.next_char()?;
                    match e {
                        '\\' | '\'' | '"' => out.push(e),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'a' => out.push('\x07'),
                        'b' => out.push('\x08'),
                        'f' => out.push('\x0c'),
                        'v' => out.push('\x0b'),
                        'x' => out.push(self.hex_escape(2)?),
                        'u' => out.push(self.hex_escape(4)?),
                        'U' => out.push(self.hex_escape(8)?),
                        // Python keeps an unknown escape as written.
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn raw_string(&mut self) -> Option<String> {
        let q = self.peek()?;
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.next_char()?;
            if c as u32 == q as u32 {
                return Some(out);
            }
            out.push(c);
            if c == '\\' {
                out.push(self.next_char()?);
            }
        }
    }

    fn hex_escape(&mut self, n: usize) -> Option<char> {
        let digits = self.text.get(self.i..self.i + n)?;
        let v = u32::from_str_radix(digits, 16).ok()?;
        self.i += n;
        char::from_u32(v)
    }

    fn next_char(&mut self) -> Option<char> {
        let c = self.text.get(self.i..)?.chars().next()?;
        self.i += c.len_utf8();
        Some(c)
    }

    fn number(&mut self) -> Option<Num> {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
            || (matches!(self.peek(), Some(b'+' | b'-'))
                && matches!(self.s.get(self.i.wrapping_sub(1)), Some(b'e' | b'E'))
                && !self.text[start..self.i].starts_with("0x")
                && !self.text[start..self.i].starts_with("0X"))
        {
            self.i += 1;
        }
        let t = &self.text[start..self.i];
        if t.is_empty() || t.starts_with('_') || t.ends_with('_') || t.contains("__") {
            return None;
        }
        if let Some(body) = t.strip_suffix(['j', 'J']) {
            return float_text(body).map(|_| Num::Imaginary(t.to_string()));
        }
        let lower = t.to_ascii_lowercase();
        let radix = |p: &str, r: u32| -> Option<Num> {
            let digits = lower
                .strip_prefix(p)?
                .trim_start_matches('_')
                .replace('_', "");
            i128::from_str_radix(&digits, r).ok().map(Num::Int)
        };
        if lower.starts_with("0x") {
            return radix("0x", 16);
        }
        if lower.starts_with("0o") {
            return radix("0o", 8);
        }
        if lower.starts_with("0b") {
            return radix("0b", 2);
        }
        let plain = t.replace('_', "");
        if plain.bytes().all(|c| c.is_ascii_digit()) {
            // Python refuses leading zeros in a non-zero decimal (`007`).
            if plain.len() > 1 && plain.starts_with('0') && plain.bytes().any(|c| c != b'0') {
                return None;
            }
            return plain.parse().ok().map(Num::Int);
        }
        float_text(t).map(Num::Float)
    }
}

enum Num {
    Int(i128),
    Float(f64),
    /// An imaginary literal: Ansible keeps complex values as their text.
    Imaginary(String),
}

fn float_text(t: &str) -> Option<f64> {
    let plain = t.replace('_', "");
    let ok = !plain.is_empty()
        && plain
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        && plain.bytes().any(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    plain.parse().ok()
}

fn int_value(n: i128) -> Value {
    if let Ok(i) = i64::try_from(n) {
        Value::Number(i.into())
    } else if let Ok(u) = u64::try_from(n) {
        Value::Number(u.into())
    } else {
        // Beyond JSON's integers: kept as text rather than rounded.
        Value::String(n.to_string())
    }
}

fn float_value(x: f64) -> Option<Value> {
    Number::from_f64(x).map(Value::Number)
}

/// Dict keys: Ansible's variables are keyed by text; Python would keep an int key as an int,
/// which JSON (and `ansible-inventory`) turns into its text.
fn key_text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if b { "true" } else { "false" }.to_string()),
        Value::Null => Some("null".to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shlex_like_python() {
        let cases: &[(&str, &[&str])] = &[
            ("a b  c", &["a", "b", "c"]),
            (r#"x="hello world" y='a b'"#, &["x=hello world", "y=a b"]),
            (r#"q="'03#x'""#, &["q='03#x'"]),
            ("pw=abc#def rest=1", &["pw=abc"]),
            ("a # comment", &["a"]),
            (r"bs=a\\b", &[r"bs=a\b"]),
            (r#"bq=a"b c"d"#, &["bq=ab cd"]),
            (r#"e="a\"b""#, &[r#"e=a"b"#]),
            (r#"e="a\nb""#, &[r"e=a\nb"]),
            ("", &[]),
        ];
        for (line, want) in cases {
            let got = shlex_split(line).expect("splits");
            assert_eq!(got, *want, "{line}");
        }
        assert_eq!(shlex_split("a 'b"), Err(3));
        assert_eq!(shlex_split(r#"a "b"#), Err(3));
    }

    #[test]
    fn literal_eval_like_python() {
        let cases: &[(&str, Option<Value>)] = &[
            ("1", Some(json!(1))),
            ("-3", Some(json!(-3))),
            ("+4", Some(json!(4))),
            ("0x1f", Some(json!(31))),
            ("0o17", Some(json!(15))),
            ("1_000", Some(json!(1000))),
            ("00", Some(json!(0))),
            ("007", None),
            ("1.50", Some(json!(1.5))),
            ("1e3", Some(json!(1000.0))),
            ("-0.5", Some(json!(-0.5))),
            ("1j", Some(json!("1j"))),
            ("True", Some(json!(true))),
            ("None", Some(Value::Null)),
            ("yes", None),
            ("hello world", None),
            ("'x y'", Some(json!("x y"))),
            ("'a' 'b'", Some(json!("ab"))),
            ("'it''s'", Some(json!("its"))),
            (r#""a\tb""#, Some(json!("a\tb"))),
            ("[1, 'a']", Some(json!([1, "a"]))),
            ("(1,2)", Some(json!([1, 2]))),
            ("(1)", Some(json!(1))),
            ("{'a': 1, 'b': [True]}", Some(json!({"a": 1, "b": [true]}))),
            ("{1}", Some(json!([1]))),
            ("23 # comment", Some(json!(23))),
            ("a=b", None),
            ("", None),
            ("1+2", None),
            ("[1,", None),
            ("'unclosed", None),
        ];
        for (text, want) in cases {
            assert_eq!(&literal(text), want, "{text}");
        }
    }

    #[test]
    fn deep_nesting_is_text_not_a_crash() {
        let deep = "[".repeat(10_000);
        assert_eq!(literal(&deep), None);
    }
}
