//! Stage `inventory`, sources only Ansible can read: which sources those are, running
//! `ansible-inventory -i SRC --list` (Ansible's own engine, told to fail rather than warn when
//! it cannot parse the source), and reading its JSON into the same [`Inventory`].
//! Invariant: `ansible-inventory` is run directly (no shell) with the source as one argument;
//! its JSON is checked shape by shape and a mismatch is an error naming what was expected.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indexmap::IndexMap;
use serde_json::Value;

use super::build::{Builder, EdgeError};
use super::{Inventory, InventoryError};

/// `None` when `source` is a static file the built-in readers handle; else what it is (for
/// the message when Ansible is missing).
pub(super) fn needs_ansible(source: &Path) -> Result<Option<String>, InventoryError> {
    let read_err = |e| InventoryError::Read {
        path: source.to_path_buf(),
        source: e,
    };
    let meta = std::fs::metadata(source).map_err(read_err)?;
    if meta.is_dir() {
        return Ok(Some("a directory".to_string()));
    }
    if meta.permissions().mode() & 0o111 != 0 {
        return Ok(Some(
            "executable (a dynamic inventory script, which Ansible runs)".to_string(),
        ));
    }
    let ext = source.extension().and_then(|e| e.to_str());
    if !matches!(ext, None | Some("ini" | "yml" | "yaml")) {
        return Ok(Some(format!(
            "neither `.ini`, `.yml` nor `.yaml` (`.{}`)",
            ext.unwrap_or_default()
        )));
    }
    let dir = source.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for vars_dir in ["group_vars", "host_vars"] {
        if dir.join(vars_dir).is_dir() {
            return Ok(Some(format!(
                "an inventory with `{vars_dir}/` beside it (variables Ansible would add)"
            )));
        }
    }
    if matches!(ext, Some("yml" | "yaml")) {
        let text = std::fs::read_to_string(source).map_err(read_err)?;
        if text.lines().any(|l| l.starts_with("plugin:")) {
            return Ok(Some("an inventory plugin's configuration".to_string()));
        }
    }
    Ok(None)
}

/// `ansible-inventory` on `PATH`.
fn find_program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ansible-inventory"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Read `source` through `ansible-inventory`; `what` says why (for the missing-Ansible error).
pub(super) fn load(
    source: &Path,
    what: &str,
    program: Option<&Path>,
) -> Result<Inventory, InventoryError> {
    let Some(program) = program.map(Path::to_path_buf).or_else(find_program) else {
        return Err(InventoryError::NeedsAnsible {
            path: source.to_path_buf(),
            what: what.to_string(),
        });
    };
    let out = Command::new(program)
        .arg("-i")
        .arg(source)
        .arg("--list")
        // Ansible only warns when a source cannot be parsed and lists an empty inventory.
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "True")
        .env("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "True")
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| InventoryError::AnsibleFailed {
            path: source.to_path_buf(),
            status: "did not start".to_string(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(InventoryError::AnsibleFailed {
            path: source.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        });
    }
    let json = String::from_utf8(out.stdout).map_err(|_| InventoryError::AnsibleOutput {
        path: source.to_path_buf(),
        message: "it is not UTF-8".to_string(),
    })?;
    from_json(source, &json)
}

/// Read the JSON of `ansible-inventory --list` (or of a dynamic inventory script, the same
/// shape): groups `{hosts: [..], children: [..], vars: {..}}` and `_meta.hostvars`.
pub(super) fn from_json(source: &Path, json: &str) -> Result<Inventory, InventoryError> {
    let bad = |message: String| InventoryError::AnsibleOutput {
        path: source.to_path_buf(),
        message,
    };
    let top: IndexMap<String, Value> =
        serde_json::from_str(json).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let mut b = Builder::new();
    let mut hostvars = serde_json::Map::new();
    for (name, body) in &top {
        if name == "_meta" {
            if let Some(hv) = body.get("hostvars") {
                hostvars = hv
                    .as_object()
                    .cloned()
                    .ok_or_else(|| bad("`_meta.hostvars` is not an object".to_string()))?;
            }
            continue;
        }
        b.add_group(name);
        // A script may list a group's hosts as a bare list.
        if body.is_array() {
            continue;
        }
        if !body.is_object() {
            return Err(bad(format!("group `{name}` is not an object")));
        }
    }
    let names =
        |v: Option<&Value>, what: &str, group: &str| -> Result<Vec<String>, InventoryError> {
            match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str().map(str::to_string).ok_or_else(|| {
                            bad(format!("`{group}.{what}` holds a non-string `{i}`"))
                        })
                    })
                    .collect(),
                Some(other) => Err(bad(format!("`{group}.{what}` is not a list: `{other}`"))),
            }
        };
    for (name, body) in &top {
        if name == "_meta" {
            continue;
        }
        let (hosts, children, vars) = if body.is_array() {
            (names(Some(body), "hosts", name)?, Vec::new(), None)
        } else {
            (
                names(body.get("hosts"), "hosts", name)?,
                names(body.get("children"), "children", name)?,
                body.get("vars"),
            )
        };
        for c in &children {
            b.add_group(c);
            b.add_child(name, c).map_err(|EdgeError::Cycle| {
                bad(format!(
                    "adding group `{c}` to `{name}` makes a loop of groups"
                ))
            })?;
        }
        for h in &hosts {
            b.add_host(h, name, None);
        }
        match vars {
            None | Some(Value::Null) => {}
            Some(Value::Object(vars)) => {
                for (k, v) in vars {
                    b.set_group_var(name, k, v.clone()).map_err(bad)?;
                }
            }
            Some(other) => return Err(bad(format!("`{name}.vars` is not an object: `{other}`"))),
        }
    }
    for (host, vars) in hostvars {
        let Value::Object(vars) = vars else {
            return Err(bad(format!("the hostvars of `{host}` are not an object")));
        };
        if !b.hosts.contains_key(&host) {
            b.add_host(&host, "all", None);
        }
        for (k, v) in vars {
            b.set_host_var(&host, &k, v);
        }
    }
    b.finish(source.to_path_buf())
}
