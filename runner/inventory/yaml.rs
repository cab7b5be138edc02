//! Stage `inventory`, static YAML inventories as Ansible's `yaml` plugin reads them: a mapping
//! of groups, each with optional `hosts` (host → its vars), `vars` and `children` (group → its
//! own definition, recursively), in the order written. Values keep their YAML types.
//! Invariant: every refusal names the line and column; where Ansible only warns and skips (a
//! key other than `hosts`/`vars`/`children`, a group that is not a mapping) ov refuses, since
//! a skipped part of a fleet is a surprise at push time.

use std::path::Path;

use ov_compiler::yaml::{self as oy, Node, Value as Y, YamlError, YamlErrorKind};
use serde_json::Value;

use super::build::{Builder, EdgeError};
use super::ini::expand_host;
use super::{Inventory, InventoryError};

/// Whether `text` (of a file without a YAML extension) is a YAML mapping, as Ansible's YAML
/// plugin would accept before its INI plugin gets a try.
pub(super) fn looks_like_yaml(text: &str) -> bool {
    oy::parse_node(Path::new("-"), text).is_ok_and(|n| n.as_map().is_some_and(|m| !m.is_empty()))
}

pub(super) fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let root = oy::parse_node(path, text)?;
    let r = Reader { path, text };
    let Some(groups) = root.as_map() else {
        let what = if root.is_null() {
            "is empty".to_string()
        } else {
            format!("is {}", root.type_name())
        };
        return Err(r.err(
            &root,
            YamlErrorKind::WrongType,
            format!("a YAML inventory is a mapping of groups, but this file {what}"),
            "start with `all:` and put `hosts:`, `vars:` and `children:` under it",
        ));
    };
    if groups.is_empty() {
        return Err(r.err(
            &root,
            YamlErrorKind::WrongType,
            "a YAML inventory is a mapping of groups, but this one is empty".to_string(),
            "start with `all:` and put `hosts:`, `vars:` and `children:` under it",
        ));
    }
    if let Some((k, _)) = groups
        .iter()
        .find(|(k, _)| k.scalar_text() == Some("plugin"))
    {
        return Err(r.err(
            k,
            YamlErrorKind::Invalid,
            "this is an inventory plugin's configuration, which only Ansible can read".to_string(),
            "install ansible-core so `ansible-inventory` can read it, or give a static inventory",
        ));
    }
    let mut b = Builder::new();
    for (k, v) in groups {
        r.group(&mut b, k, Some(v))?;
    }
    b.finish(path.to_path_buf())
}

struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Reader<'_> {
    fn err(&self, at: &Node, kind: YamlErrorKind, msg: String, hint: &str) -> InventoryError {
        YamlError::at(self.path, self.text, at.pos, kind, msg)
            .with_hint(hint)
            .into()
    }

    fn name<'n>(&self, key: &'n Node, what: &str) -> Result<&'n str, InventoryError> {
        match (&key.value, key.scalar_text()) {
            (Y::Str(s), _) if !s.is_empty() => Ok(s),
            (Y::Int(_) | Y::Float(_) | Y::Bool(_), Some(t)) if what == "group" => Ok(t),
            _ => Err(self.err(
                key,
                YamlErrorKind::WrongType,
                format!("a {what} name must be a non-empty string, found {}", key.type_name()),
                "quote names that YAML would read as numbers (`\"10.0.0.1\"` is fine unquoted, `2024` is not)",
            )),
        }
    }

    /// Read group `key` with its definition `def`; returns the group's name.
    fn group(
        &self,
        b: &mut Builder,
        key: &Node,
        def: Option<&Node>,
    ) -> Result<String, InventoryError> {
        let name = self.name(key, "group")?.to_string();
        b.add_group(&name);
        let Some(def) = def.filter(|d| !d.is_null()) else {
            return Ok(name);
        };
        let Some(entries) = def.as_map() else {
            return Err(self.err(
                def,
                YamlErrorKind::WrongType,
                format!("group `{name}` must be a mapping (`hosts:`, `vars:`, `children:`), found {}", def.type_name()),
                "a group holds `hosts:`, `vars:` and `children:`; leave it empty with `{name}:` alone",
            ));
        };
        for (k, v) in entries {
            let section = k.scalar_text().unwrap_or("");
            if !matches!(section, "hosts" | "vars" | "children") {
                return Err(self.err(
                    k,
                    YamlErrorKind::UnknownKey,
                    format!("unknown key `{section}` in group `{name}`"),
                    "a group holds only `hosts:`, `vars:` and `children:`; host variables go under the host, group variables under `vars:`",
                ));
            }
            // Ansible accepts a bare string as a one-entry mapping (`hosts: web1`).
            let items: Vec<(&Node, Option<&Node>)> = match &v.value {
                Y::Null => continue,
                Y::Map(m) => m.iter().map(|(k, v)| (k, Some(v))).collect(),
                Y::Str(_) => vec![(v, None)],
                _ => {
                    return Err(self.err(
                        v,
                        YamlErrorKind::WrongType,
                        format!("`{section}` of group `{name}` must be a mapping, found {}", v.type_name()),
                        "write `hosts:`/`children:` entries as `name:` lines (not a `- name` list), and `vars:` as `key: value`",
                    ))
                }
            };
            match section {
                "vars" => {
                    for (vk, vv) in items {
                        let var = self.name(vk, "variable")?;
                        let value = vv.map_or(Value::Null, json);
                        b.set_group_var(&name, var, value).map_err(|m| {
                            self.err(
                                vv.unwrap_or(vk),
                                YamlErrorKind::Invalid,
                                m,
                                "give a whole number",
                            )
                        })?;
                    }
                }
                "children" => {
                    for (ck, cv) in items {
                        let child = self.group(b, ck, cv)?;
                        b.add_child(&name, &child).map_err(|EdgeError::Cycle| {
                            self.err(
                                ck,
                                YamlErrorKind::Invalid,
                                format!(
                                    "adding group `{child}` to `{name}` makes a loop of groups"
                                ),
                                "a group cannot be its own ancestor",
                            )
                        })?;
                    }
                }
                _ => {
                    for (hk, hv) in items {
                        let entry = self.name(hk, "host")?;
                        let (hosts, port) = expand_host(entry).map_err(|m| {
                            self.err(
                                hk,
                                YamlErrorKind::Invalid,
                                m,
                                "a host is `name`, `name:port` or a range like `web[01:12]`",
                            )
                        })?;
                        let vars: &[(Node, Node)] = match hv {
                            None => &[],
                            Some(n) => match &n.value {
                                Y::Null => &[],
                                Y::Map(m) => m,
                                _ => {
                                    return Err(self.err(
                                        n,
                                        YamlErrorKind::WrongType,
                                        format!("the variables of host `{entry}` must be a mapping, found {}", n.type_name()),
                                        "write `host:` alone, or `host:` followed by indented `key: value` lines",
                                    ))
                                }
                            },
                        };
                        for h in &hosts {
                            b.add_host(h, &name, port);
                            for (vk, vv) in vars {
                                let var = self.name(vk, "variable")?;
                                b.set_host_var(h, var, json(vv));
                            }
                        }
                    }
                }
            }
        }
        Ok(name)
    }
}

/// A YAML node as a JSON value (mapping keys by their text). Numbers follow YAML 1.1, as
/// Ansible's loader reads them: `0755` is octal (493), not decimal.
fn json(n: &Node) -> Value {
    if let (Y::Int(_) | Y::Float(_), Some(i)) = (&n.value, n.scalar_text().and_then(yaml11_int)) {
        return int(i);
    }
    match &n.value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Int(i) => int(*i),
        Y::Float(x) => serde_json::Number::from_f64(*x)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(n.scalar_text().unwrap_or("").to_string())),
        Y::Str(s) => Value::String(s.clone()),
        Y::Seq(items) => Value::Array(items.iter().map(json).collect()),
        Y::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.scalar_text().unwrap_or("null").to_string(), json(v)))
                .collect(),
        ),
    }
}

fn int(i: i128) -> Value {
    i64::try_from(i)
        .map(Value::from)
        .or_else(|_| u64::try_from(i).map(Value::from))
        .unwrap_or_else(|_| Value::String(i.to_string()))
}

/// YAML 1.1's octal (`0755`), binary (`0b101`) and hex (`0x1f`) integers, with `_` separators.
fn yaml11_int(text: &str) -> Option<i128> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let body = body.replace('_', "");
    let v = if let Some(b) = body.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = body.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if body.len() > 1
        && body.starts_with('0')
        && body.bytes().all(|c| (b'0'..=b'7').contains(&c))
    {
        i128::from_str_radix(&body[1..], 8).ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}
