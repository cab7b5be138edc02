//! Stage `inventory`, host patterns as Ansible's `--limit` reads them: parts separated by `,`
//! (or `:` when the whole is not one address), each a host or group name, a glob (`web*`,
//! `db[12]?`), a regex (`~web\d+`) or `all`/`*`, optionally prefixed `&` (intersection) or `!`
//! (exclusion) and suffixed with a subscript (`web[0]`, `web[1:3]`); `@FILE` reads parts from a
//! file, one a line. Parts apply in Ansible's order: unions, then intersections, then exclusions.
//! Invariant: a part that matches no host and no group is an error (Ansible warns and goes on).

use std::collections::HashSet;

use regex::Regex;

use super::{Inventory, InventoryError};

/// The names of the hosts `pattern` selects (any order; the caller orders them).
pub(super) fn select(inv: &Inventory, pattern: &str) -> Result<Vec<String>, InventoryError> {
    let mut parts = Vec::new();
    for part in split(pattern) {
        if let Some(file) = part.strip_prefix('@') {
            let text = std::fs::read_to_string(file).map_err(|e| InventoryError::Pattern {
                pattern: part.clone(),
                message: format!("cannot read the limit file `{file}`: {e}"),
            })?;
            parts.extend(text.split('\n').map(|l| l.trim().to_string()));
        } else {
            parts.push(part);
        }
    }
    let parts: Vec<String> = parts.into_iter().filter(|p| !p.is_empty()).collect();
    let mut regular: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with(['!', '&']))
        .collect();
    if regular.is_empty() {
        regular.push("all");
    }
    let intersect = parts.iter().filter(|p| p.starts_with('&'));
    let exclude = parts.iter().filter(|p| p.starts_with('!'));
    let mut hosts: Vec<String> = Vec::new();
    for p in regular {
        if inv.host(p).is_some() {
            hosts.push(p.to_string());
            continue;
        }
        let have: HashSet<String> = hosts.iter().cloned().collect();
        hosts.extend(match_one(inv, p)?.into_iter().filter(|h| !have.contains(h)));
    }
    for p in intersect {
        let that: HashSet<String> = match_one(inv, &p[1..])?.into_iter().collect();
        hosts.retain(|h| that.contains(h));
    }
    for p in exclude {
        let that: HashSet<String> = match_one(inv, &p[1..])?.into_iter().collect();
        hosts.retain(|h| !that.contains(h));
    }
    Ok(hosts)
}

/// Split a pattern into its parts (Ansible's `split_host_pattern`).
fn split(pattern: &str) -> Vec<String> {
    let parts: Vec<String> = if pattern.contains(',') {
        pattern.split(',').map(str::to_string).collect()
    } else if is_address(pattern) {
        vec![pattern.to_string()]
    } else {
        // Runs of anything but whitespace, `:`, `[`, `]`, or whole `[…]` groups.
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '[' => {
                    let rest: String = chars.clone().collect();
                    if let Some(end) = rest.find(']') {
                        cur.push('[');
                        cur.push_str(&rest[..=end]);
                        for _ in 0..rest[..=end].chars().count() {
                            chars.next();
                        }
                    } else if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c if c.is_whitespace() || c == ':' || c == ']' => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    };
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Whether `p` reads as one address with an optional port (a host name, IPv4 or IPv6, maybe
/// with ranges): then its `:` are not separators.
fn is_address(p: &str) -> bool {
    let host = match p.strip_prefix('[').and_then(|r| r.rsplit_once("]:")) {
        Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) && !port.is_empty() => h,
        _ => match p.rsplit_once(':') {
            Some((h, port))
                if !port.is_empty()
                    && port.bytes().all(|c| c.is_ascii_digit())
                    && !h.contains(':') =>
            {
                h
            }
            _ => p,
        },
    };
    if host.is_empty() {
        return false;
    }
    let v6 = host.matches(':').count() >= 2
        && host
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    let name = !host.contains(':')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'));
    v6 || name
}

/// The hosts of one part (without its `&`/`!`), with its subscript applied.
fn match_one(inv: &Inventory, part: &str) -> Result<Vec<String>, InventoryError> {
    let (expr, sub) = subscript(part);
    let hosts = enumerate(inv, expr, part)?;
    let Some((start, end)) = sub else {
        return Ok(hosts);
    };
    if hosts.is_empty() {
        return Ok(hosts);
    }
    let len = hosts.len() as i64;
    let out_of_range = || InventoryError::Pattern {
        pattern: part.to_string(),
        message: format!("the subscript is out of range: it selects from {len} hosts"),
    };
    match end {
        None | Some(0) => {
            let i = if start < 0 { len + start } else { start };
            if !(0..len).contains(&i) {
                return Err(out_of_range());
            }
            Ok(vec![hosts[i as usize].clone()])
        }
        Some(end) => {
            let end = if end == -1 { len - 1 } else { end };
            let (s, e) = (start.clamp(0, len), (end + 1).clamp(0, len));
            Ok(if s < e {
                hosts[s as usize..e as usize].to_vec()
            } else {
                Vec::new()
            })
        }
    }
}

/// `expr[i]`, `expr[i:j]`, `expr[i:]` (and the old `expr[i-j]`): the expression and the
/// subscript as (start, end) with end `-1` for "to the last", `None` for a single index.
fn subscript(part: &str) -> (&str, Option<(i64, Option<i64>)>) {
    if part.starts_with('~') || !part.ends_with(']') {
        return (part, None);
    }
    let Some(open) = part.rfind('[') else {
        return (part, None);
    };
    let (expr, inner) = (&part[..open], &part[open + 1..part.len() - 1]);
    if expr.is_empty() {
        return (part, None);
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if let Some(n) = inner
        .strip_prefix('-')
        .filter(|n| digits(n))
        .or(Some(inner).filter(|n| digits(n)))
    {
        let v: i64 = n.parse().unwrap_or(i64::MAX);
        let v = if inner.starts_with('-') { -v } else { v };
        return (expr, Some((v, None)));
    }
    if let Some(sep) = inner.find([':', '-']) {
        let (a, b) = (&inner[..sep], &inner[sep + 1..]);
        if digits(a) && (b.is_empty() || digits(b)) {
            let start = a.parse().unwrap_or(i64::MAX);
            let end = if b.is_empty() {
                -1
            } else {
                b.parse().unwrap_or(i64::MAX)
            };
            return (expr, Some((start, Some(end))));
        }
    }
    (part, None)
}

/// Hosts of the groups `expr` names, and (for a glob or regex, or when no group matched) the
/// hosts it names.
fn enumerate(inv: &Inventory, expr: &str, part: &str) -> Result<Vec<String>, InventoryError> {
    let matcher = matcher(expr).map_err(|message| InventoryError::Pattern {
        pattern: part.to_string(),
        message,
    })?;
    let mut out = Vec::new();
    let groups: Vec<&str> = inv
        .groups
        .keys()
        .map(String::as_str)
        .filter(|g| matcher.is_match(g))
        .collect();
    for g in &groups {
        out.extend(inv.group_hosts(g));
    }
    if groups.is_empty() || expr.starts_with('~') || expr.contains(['.', '?', '*', '[']) {
        out.extend(
            inv.hosts
                .iter()
                .filter(|h| matcher.is_match(&h.name))
                .map(|h| h.name.clone()),
        );
    }
    if out.is_empty() && groups.is_empty() && expr != "all" {
        let mut names: Vec<&str> = inv
            .groups
            .keys()
            .map(String::as_str)
            .filter(|g| *g != "all" && *g != "ungrouped")
            .collect();
        let shown = names.len().min(8);
        let more = names.len() - shown;
        names.truncate(shown);
        let mut known = if names.is_empty() {
            "no groups".to_string()
        } else {
            format!("groups `{}`", names.join("`, `"))
        };
        if more > 0 {
            known.push_str(&format!(" and {more} more"));
        }
        known.push_str(&format!(" and {} hosts", inv.hosts.len()));
        return Err(InventoryError::NoMatch {
            pattern: part.to_string(),
            path: inv.source.clone(),
            known,
        });
    }
    Ok(out)
}

/// `~regex` (matched at the start, as Python's `re.match`) or a glob (the whole name, as
/// Python's `fnmatch`; case-sensitive).
fn matcher(expr: &str) -> Result<Regex, String> {
    if let Some(re) = expr.strip_prefix('~') {
        return Regex::new(&format!("^(?:{re})"))
            .map_err(|e| format!("not a regular expression ov can use: {e}"));
    }
    Regex::new(&format!("^(?s:{})\\z", glob(expr))).map_err(|e| format!("not a glob: {e}"))
}

/// Python's `fnmatch.translate`: `*`, `?`, `[seq]`, `[!seq]`; a `[` without `]` is literal.
fn glob(pat: &str) -> String {
    let chars: Vec<char> = pat.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                if !out.ends_with(".*") {
                    out.push_str(".*");
                }
            }
            '?' => out.push('.'),
            '[' => {
                let mut j = i;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str("\\[");
                    continue;
                }
                let stuff: Vec<char> = chars[i..j].to_vec();
                i = j + 1;
                let (negate, body) = match stuff.first() {
                    Some('!') => (true, &stuff[1..]),
                    _ => (false, &stuff[..]),
                };
                out.push('[');
                if negate {
                    out.push('^');
                }
                for ch in body {
                    if ch.is_alphanumeric() || *ch == '-' {
                        out.push(*ch);
                    } else {
                        out.push('\\');
                        out.push(*ch);
                    }
                }
                out.push(']');
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out
}
