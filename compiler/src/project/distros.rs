//! Stage `load`, distros: the built-in distros of the original and the project's `distros:`
//! entries, each checked strictly and with inheritance applied.

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;
use serde::Serialize;

use crate::yaml::{self, Doc, Node, Value, YamlErrorKind};

use super::files::{Entry, Merged};
use super::{schema, unknown_key, ProjectError};

/// One distro of `build.yml`, with inheritance (`inherits:`) applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Distro {
    /// Its name (`archlinux`, `debian`, …).
    pub name: String,
    /// Package formats: the primary format first; builder-backed formats (`aur`) last.
    pub formats: Vec<String>,
    /// `inherits:` as written.
    pub inherits: Option<String>,
    /// The image's default user (`ubuntu` on Ubuntu cloud images).
    pub base_user: Option<BaseUser>,
}

/// `base_user:` of a distro.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseUser {
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Formats a builder stage produces (`builders.<x>.detect_config`); `aur` always is one.
pub(super) fn builder_backed_formats(m: &Merged) -> Result<BTreeSet<String>, ProjectError> {
    let mut out = BTreeSet::from(["aur".to_string()]);
    for (name, e) in &m.builders {
        let doc = e.doc();
        if let Some(dc) = e.value.get("detect_config") {
            if let Some(f) = doc
                .opt_string(dc, &format!("builders.{name}.detect_config"))
                .map_err(schema)?
            {
                out.insert(f);
            }
        }
    }
    Ok(out)
}

/// The distros of the original's `build.yml` at 3e714536, for projects without `distros:`.
pub(super) fn builtin_distros() -> BTreeMap<String, Distro> {
    let d = |name: &str, formats: &[&str], inherits: Option<&str>, base_user: Option<BaseUser>| {
        (
            name.to_string(),
            Distro {
                name: name.to_string(),
                formats: formats.iter().map(|s| s.to_string()).collect(),
                inherits: inherits.map(str::to_string),
                base_user,
            },
        )
    };
    BTreeMap::from([
        d("archlinux", &["pac", "aur"], None, None),
        d("debian", &["deb"], None, None),
        d("fedora", &["rpm"], None, None),
        d(
            "ubuntu",
            &["deb"],
            Some("debian"),
            Some(BaseUser {
                name: "ubuntu".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/ubuntu".into(),
            }),
        ),
    ])
}

pub(super) const DISTRO_KEYS: &[&str] = &[
    "inherits",
    "bootstrap",
    "workarounds",
    "formats",
    "base_user",
];
pub(super) const BASE_USER_KEYS: &[&str] = &["name", "uid", "gid", "home"];

/// A distro entry as written, before inheritance.
pub(super) struct RawDistro<'a> {
    pub(super) entry: Entry<'a>,
    pub(super) inherits: Option<(String, &'a Node)>,
    pub(super) formats: Vec<String>,
    pub(super) base_user: Option<BaseUser>,
}

pub(super) fn resolve_distros(
    m: &Merged,
    builder_formats: &BTreeSet<String>,
) -> Result<BTreeMap<String, Distro>, ProjectError> {
    let mut raw: IndexMap<String, RawDistro> = IndexMap::new();
    for (name, e) in &m.distros {
        let doc = e.doc();
        let what = format!("distros.{name}");
        if name.is_empty() || name.contains([':', ',', ' ']) {
            return Err(schema(doc.error(
                e.key.pos,
                YamlErrorKind::Invalid,
                format!(
                    "`{name}` cannot be a distro name (it is used in `<distro>:<version>` tags)"
                ),
            )));
        }
        let mut r = RawDistro {
            entry: *e,
            inherits: None,
            formats: Vec::new(),
            base_user: None,
        };
        for (k, v) in doc.map(e.value, &what).map_err(schema)? {
            let key = doc.key(k, &what).map_err(schema)?;
            let kwhat = format!("{what}.{key}");
            match key.as_str() {
                "inherits" => {
                    r.inherits = doc.opt_string(v, &kwhat).map_err(schema)?.map(|s| (s, v));
                }
                "formats" => {
                    for (fk, fv) in doc.map(v, &kwhat).map_err(schema)? {
                        let f = doc.key(fk, &kwhat).map_err(schema)?;
                        if !matches!(fv.value, Value::Map(_) | Value::Null) {
                            return Err(schema(doc.wrong_type(
                                fv,
                                "a mapping",
                                &format!("{kwhat}.{f}"),
                            )));
                        }
                        r.formats.push(f);
                    }
                }
                "base_user" => r.base_user = Some(parse_base_user(&doc, v, &kwhat)?),
                // Containerfile-only; kept lenient.
                "bootstrap" | "workarounds" => {}
                _ => return Err(schema(unknown_key(&doc, k, &key, &what, DISTRO_KEYS))),
            }
        }
        raw.insert(name.clone(), r);
    }
    let mut out = BTreeMap::new();
    for (name, r) in &raw {
        // Walk up the chain: formats and base_user come from the nearest distro that has them.
        let mut formats = r.formats.clone();
        let mut base_user = r.base_user.clone();
        let mut chain = vec![name.as_str()];
        let mut cur = r;
        while let Some((parent, node)) = &cur.inherits {
            let doc = cur.entry.doc();
            let Some(p) = raw.get(parent) else {
                let e = doc.error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!(
                        "distro `{}` inherits unknown distro `{parent}`",
                        chain[chain.len() - 1]
                    ),
                );
                let e = match yaml::suggest(parent, raw.keys().map(String::as_str)) {
                    Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                    None => e,
                };
                return Err(schema(e));
            };
            if chain.contains(&parent.as_str()) || chain.len() > 10 {
                chain.push(parent);
                return Err(schema(doc.error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("distro inheritance cycle: {}", chain.join(" → ")),
                )));
            }
            chain.push(parent);
            if formats.is_empty() {
                formats = p.formats.clone();
            }
            if base_user.is_none() {
                base_user = p.base_user.clone();
            }
            cur = p;
        }
        // Primary format first; formats built by a builder stage (aur) after the others.
        let (mut plain, built): (Vec<String>, Vec<String>) = formats
            .into_iter()
            .partition(|f| !builder_formats.contains(f));
        plain.extend(built);
        out.insert(
            name.clone(),
            Distro {
                name: name.clone(),
                formats: plain,
                inherits: r.inherits.as_ref().map(|(s, _)| s.clone()),
                base_user,
            },
        );
    }
    Ok(out)
}

pub(super) fn parse_base_user(
    doc: &Doc,
    node: &Node,
    what: &str,
) -> Result<BaseUser, ProjectError> {
    let mut name = None;
    let mut home = None;
    let (mut uid, mut gid) = (None, None);
    for (k, v) in doc.map(node, what).map_err(schema)? {
        let key = doc.key(k, what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        match key.as_str() {
            "name" => name = Some(doc.string(v, &kwhat).map_err(schema)?),
            "home" => home = Some(doc.string(v, &kwhat).map_err(schema)?),
            "uid" => uid = Some(doc.uint::<u32>(v, &kwhat).map_err(schema)?),
            "gid" => gid = Some(doc.uint::<u32>(v, &kwhat).map_err(schema)?),
            _ => return Err(schema(unknown_key(doc, k, &key, what, BASE_USER_KEYS))),
        }
    }
    match (name, uid, gid, home) {
        (Some(name), Some(uid), Some(gid), Some(home)) => Ok(BaseUser {
            name,
            uid,
            gid,
            home,
        }),
        _ => Err(schema(doc.error(
            node.pos,
            YamlErrorKind::MissingKey,
            format!("`{what}` needs `name`, `uid`, `gid` and `home`"),
        ))),
    }
}
