//! Stage `inventory`, static INI inventories as Ansible's `ini` plugin reads them: lines before
//! any section are `ungrouped` hosts; `[g]` lists hosts (`name[:port] key=value …`, ranges like
//! `web[01:12]`), `[g:children]` child groups (declared before or after), `[g:vars]` one
//! `key=value` a line. Values are Python literals when they read as one, text otherwise.
//! Invariant: every refusal names the line and column; an undeclared child or `:vars` group is
//! reported at the line that referred to it, as Ansible does.

use std::path::Path;

use ov_compiler::layer::Pos;
use ov_compiler::yaml::{YamlError, YamlErrorKind};
use serde_json::Value;

use super::build::{Builder, EdgeError};
use super::pylit::{literal, shlex_split};
use super::{Inventory, InventoryError};

/// What the lines of the current section are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Hosts,
    Children,
    Vars,
}

/// A reference to a group not declared yet.
struct Pending {
    line: u32,
    column: u32,
    state: State,
    parents: Vec<String>,
}

pub(super) fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let err = |line: u32, column: u32, kind: YamlErrorKind, msg: String, hint: &str| {
        let e = YamlError::at(path, text, Pos { line, column }, kind, msg);
        InventoryError::from(if hint.is_empty() {
            e
        } else {
            e.with_hint(hint)
        })
    };
    let mut b = Builder::new();
    let mut pending: indexmap::IndexMap<String, Pending> = indexmap::IndexMap::new();
    let mut group = "ungrouped".to_string();
    let mut state = State::Hosts;
    for (i, raw) in text.lines().enumerate() {
        let lineno = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let line = raw.trim();
        // Column (1-based, in characters) of the trimmed line's first character in `raw`.
        let indent = raw.chars().count() - raw.trim_start().chars().count();
        let col = |offset_chars: usize| u32::try_from(indent + offset_chars + 1).unwrap_or(0);
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some((name, kind)) = section(line) {
            state = match kind {
                None | Some("hosts") => State::Hosts,
                Some("children") => State::Children,
                Some("vars") => State::Vars,
                Some(other) => {
                    return Err(err(
                        lineno,
                        col(name.chars().count() + 2),
                        YamlErrorKind::Invalid,
                        format!("section `[{name}:{other}]` has an unknown type `{other}`"),
                        "a section is `[group]`, `[group:children]` or `[group:vars]`",
                    ))
                }
            };
            group = name.to_string();
            if b.groups.get(name).is_none() {
                if state == State::Vars && !pending.contains_key(name) {
                    pending.insert(
                        name.to_string(),
                        Pending {
                            line: lineno,
                            column: col(1),
                            state: State::Vars,
                            parents: Vec::new(),
                        },
                    );
                }
                b.add_group(name);
            }
            if state != State::Vars {
                if let Some(p) = pending.get(name) {
                    if p.state == State::Children {
                        add_pending_children(&mut b, &mut pending, name).map_err(
                            |(parent, child, p)| {
                                err(
                                    p.line,
                                    p.column,
                                    YamlErrorKind::Invalid,
                                    format!(
                                        "adding group `{child}` to `{parent}` makes a loop of groups"
                                    ),
                                    "a group cannot be its own ancestor",
                                )
                            },
                        )?;
                    } else {
                        pending.shift_remove(name);
                    }
                }
            }
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            return Err(err(
                lineno,
                col(0),
                YamlErrorKind::Syntax,
                format!("invalid section `{line}`"),
                "a section is `[group]`, `[group:children]` or `[group:vars]`, without spaces",
            ));
        }
        match state {
            State::Hosts => {
                let tokens = shlex_split(line).map_err(|c| {
                    err(
                        lineno,
                        col(c - 1),
                        YamlErrorKind::Syntax,
                        "this quote is never closed".to_string(),
                        "close the quote, or escape it with `\\`",
                    )
                })?;
                let Some(first) = tokens.first() else {
                    continue;
                };
                let (hosts, port) = expand_host(first).map_err(|m| {
                    err(
                        lineno,
                        col(0),
                        YamlErrorKind::Invalid,
                        m,
                        "a host is `name`, `name:port` or a range like `web[01:12]`",
                    )
                })?;
                let mut vars = Vec::new();
                for t in &tokens[1..] {
                    let Some((k, v)) = t.split_once('=') else {
                        let at = line
                            .find(t.as_str())
                            .map_or(0, |b| line[..b].chars().count());
                        return Err(err(
                            lineno,
                            col(at),
                            YamlErrorKind::Syntax,
                            format!("expected `key=value` after the host name, found `{t}`"),
                            "host variables are `key=value`; quote a value holding spaces",
                        ));
                    };
                    vars.push((k.to_string(), value(v)));
                }
                for h in hosts {
                    b.add_host(&h, &group, port);
                    for (k, v) in &vars {
                        b.set_host_var(&h, k, v.clone());
                    }
                }
            }
            State::Vars => {
                let Some((k, v)) = line.split_once('=') else {
                    return Err(err(
                        lineno,
                        col(0),
                        YamlErrorKind::Syntax,
                        format!("expected `key=value` in `[{group}:vars]`, found `{line}`"),
                        "a `:vars` section holds one `key=value` a line",
                    ));
                };
                b.set_group_var(&group, k.trim(), value(v.trim()))
                    .map_err(|m| err(lineno, col(0), YamlErrorKind::Invalid, m, ""))?;
            }
            State::Children => {
                let Some(child) = group_name(line) else {
                    return Err(err(
                        lineno,
                        col(0),
                        YamlErrorKind::Syntax,
                        format!("expected a group name in `[{group}:children]`, found `{line}`"),
                        "a `:children` section lists one group name a line",
                    ));
                };
                if b.groups.contains_key(child) {
                    b.add_child(&group, child).map_err(|EdgeError::Cycle| {
                        err(
                            lineno,
                            col(0),
                            YamlErrorKind::Invalid,
                            format!("adding group `{child}` to `{group}` makes a loop of groups"),
                            "a group cannot be its own ancestor",
                        )
                    })?;
                } else {
                    pending
                        .entry(child.to_string())
                        .or_insert_with(|| Pending {
                            line: lineno,
                            column: col(0),
                            state: State::Children,
                            parents: Vec::new(),
                        })
                        .parents
                        .push(group.clone());
                }
            }
        }
    }
    if let Some((name, p)) = pending.first() {
        let (msg, hint) = match p.state {
            State::Vars => (
                format!("section `[{name}:vars]` is for a group `{name}` that is never declared"),
                format!("declare it with `[{name}]` or list it under some `[…:children]`"),
            ),
            _ => (
                format!(
                    "`[{}:children]` names a group `{name}` that is never declared",
                    p.parents.last().map_or("", String::as_str)
                ),
                format!("declare it with `[{name}]` (it may be empty)"),
            ),
        };
        return Err(err(p.line, p.column, YamlErrorKind::Invalid, msg, &hint));
    }
    b.finish(path.to_path_buf())
}

/// Resolve a group whose children references were pending: attach it to every parent that
/// named it, then any of those parents that were pending in turn.
fn add_pending_children(
    b: &mut Builder,
    pending: &mut indexmap::IndexMap<String, Pending>,
    group: &str,
) -> Result<(), (String, String, Pending)> {
    let Some(p) = pending.shift_remove(group) else {
        return Ok(());
    };
    for parent in &p.parents {
        if b.add_child(parent, group).is_err() {
            return Err((parent.clone(), group.to_string(), p));
        }
        if pending
            .get(parent)
            .is_some_and(|q| q.state == State::Children)
        {
            add_pending_children(b, pending, parent)?;
        }
    }
    Ok(())
}

/// `[name]` or `[name:kind]`, optionally followed by a comment: the name and the kind.
fn section(line: &str) -> Option<(&str, Option<&str>)> {
    let rest = line.strip_prefix('[')?;
    let close = rest.find(']')?;
    let inner = &rest[..close];
    let after = rest[close + 1..].trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return None;
    }
    let (name, kind) = match inner.split_once(':') {
        Some((n, k)) => (n, Some(k)),
        None => (inner, None),
    };
    let name_ok = !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == ']');
    let kind_ok =
        kind.is_none_or(|k| !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_'));
    (name_ok && kind_ok).then_some((name, kind))
}

/// A `:children` line: one group name, optionally followed by a comment.
fn group_name(line: &str) -> Option<&str> {
    let end = line
        .find(|c: char| c.is_whitespace() || c == ':' || c == ']' || c == '#')
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    let rest = rest.trim_start();
    (!name.is_empty() && (rest.is_empty() || rest.starts_with('#'))).then_some(name)
}

/// An INI value: a Python literal when it is one, else the text.
fn value(v: &str) -> Value {
    literal(v).unwrap_or_else(|| Value::String(v.to_string()))
}

/// A host entry: `name`, `name:port`, `[v6addr]:port`, with `[a:b]`/`[a:b:step]` ranges
/// expanded. Shared with the YAML reader (Ansible's `_expand_hostpattern`).
pub(super) fn expand_host(entry: &str) -> Result<(Vec<String>, Option<u16>), String> {
    let (name, port) = split_port(entry)?;
    if name.trim().ends_with(':') && port.is_none() {
        return Err(format!(
            "host `{entry}` ends in `:`, which is reserved for a port"
        ));
    }
    if name.trim().is_empty() {
        return Err("empty host name".to_string());
    }
    let hosts = if name.contains('[') {
        expand_range(name)?
    } else {
        vec![name.to_string()]
    };
    if let Some(h) = hosts.iter().find(|h| h.trim() == "---") {
        return Err(format!(
            "host `{h}` looks like the start of a YAML document; name the file `.yml` if it is YAML"
        ));
    }
    Ok((hosts, port))
}

fn split_port(entry: &str) -> Result<(&str, Option<u16>), String> {
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("port `{p}` of host `{entry}` is not a port number (0 to 65535)"))
    };
    // `[host]:port` (IPv6 addresses take a port only this way).
    if let Some(inner) = entry.strip_prefix('[') {
        if let Some((host, port)) = inner.rsplit_once("]:") {
            if !host.is_empty() && !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) {
                return Ok((host, Some(parse_port(port)?)));
            }
        }
    }
    // `host:port`: the part before the last `:` holds no `:` outside a `[…]` range.
    if let Some((host, port)) = entry.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) && plain_host(host) {
            return Ok((host, Some(parse_port(port)?)));
        }
    }
    Ok((entry, None))
}

/// No `:` outside brackets, brackets balanced and not nested.
fn plain_host(h: &str) -> bool {
    let mut inside = false;
    for c in h.chars() {
        match c {
            '[' if !inside => inside = true,
            ']' if inside => inside = false,
            '[' | ']' => return false,
            ':' if !inside => return false,
            _ => {}
        }
    }
    !inside
}

/// Expand the first `[beg:end(:step)]` of `name`, then the rest recursively (numbers keep the
/// zero padding of `beg`; single letters run through `a…zA…Z`).
fn expand_range(name: &str) -> Result<Vec<String>, String> {
    let open = name.find('[').expect("caller checked");
    let Some(close_rel) = name[open..].find(']') else {
        return Err(format!("host range in `{name}` has no closing `]`"));
    };
    let close = open + close_rel;
    let (head, range, tail) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    let bounds: Vec<&str> = range.split(':').collect();
    if bounds.len() != 2 && bounds.len() != 3 {
        return Err(format!(
            "host range `[{range}]` must be `[begin:end]` or `[begin:end:step]`"
        ));
    }
    let beg = if bounds[0].is_empty() { "0" } else { bounds[0] };
    let end = bounds[1];
    if end.is_empty() {
        return Err(format!("host range `[{range}]` has no end value"));
    }
    let step: usize = match bounds.get(2) {
        None => 1,
        Some(s) => s
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("host range `[{range}]` has a bad step `{s}`"))?,
    };
    let width = if beg.len() > 1 && beg.starts_with('0') {
        if beg.len() != end.len() {
            return Err(format!(
                "host range `[{range}]`: a zero-padded begin and the end must have the same width"
            ));
        }
        Some(beg.len())
    } else {
        None
    };
    const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let items: Vec<String> = match (LETTERS.find(beg), LETTERS.find(end)) {
        (Some(b), Some(e)) if beg.len() == 1 && end.len() == 1 => {
            if b > e {
                return Err(format!("host range `[{range}]` must have begin <= end"));
            }
            LETTERS[b..=e]
                .chars()
                .step_by(step)
                .map(String::from)
                .collect()
        }
        _ => {
            let b: u64 = beg
                .parse()
                .map_err(|_| format!("host range `[{range}]`: `{beg}` is no number or letter"))?;
            let e: u64 = end
                .parse()
                .map_err(|_| format!("host range `[{range}]`: `{end}` is no number or letter"))?;
            if e.saturating_sub(b) / step as u64 > 100_000 {
                return Err(format!("host range `[{range}]` is too large"));
            }
            (b..=e)
                .step_by(step)
                .map(|n| match width {
                    Some(w) => format!("{n:0w$}"),
                    None => n.to_string(),
                })
                .collect()
        }
    };
    let mut out = Vec::new();
    for it in items {
        let h = format!("{head}{it}{tail}");
        if h.contains('[') {
            out.extend(expand_range(&h)?);
        } else {
            out.push(h);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_entries() {
        let e = |s: &str| expand_host(s).unwrap();
        assert_eq!(e("web1"), (vec!["web1".to_string()], None));
        assert_eq!(e("web1:2222"), (vec!["web1".to_string()], Some(2222)));
        assert_eq!(e("[::1]:22"), (vec!["::1".to_string()], Some(22)));
        assert_eq!(e("fe80::1"), (vec!["fe80::1".to_string()], None));
        assert_eq!(
            e("web[01:03]:22").0,
            vec!["web01".to_string(), "web02".into(), "web03".into()]
        );
        assert_eq!(
            e("h[1:5:2]").0,
            vec!["h1".to_string(), "h3".into(), "h5".into()]
        );
        assert_eq!(
            e("db-[a:c]").0,
            vec!["db-a".to_string(), "db-b".into(), "db-c".into()]
        );
        assert_eq!(e("r[1:2]-[a:b]").0.len(), 4);
        assert!(expand_host("web[01:3]").is_err());
        assert!(expand_host("web[1]").is_err());
        assert!(expand_host("h:99999").is_err());
        assert!(expand_host("h[1:9999999]").is_err());
    }

    #[test]
    fn sections() {
        assert_eq!(section("[web]"), Some(("web", None)));
        assert_eq!(section("[web:vars] # c"), Some(("web", Some("vars"))));
        assert_eq!(section("[web :vars]"), None);
        assert_eq!(group_name("web # c"), Some("web"));
        assert_eq!(group_name("web db"), None);
    }
}
