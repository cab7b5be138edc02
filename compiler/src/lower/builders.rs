//! Stage `lower`, builders: `aur` sections and the builder manifests beside `layer.yml` become
//! `Builder` steps that name every file of the layer directory they read, so rendering never
//! looks at the layer directory again.

use std::path::Path;

use crate::layer::Layer;
use crate::plan::{Action, BuilderKind, ReverseKind, ReverseOp, Scope, Step};

use super::{rev, rev_extra, step, LowerError};

/// The layer's builder steps, by builder name: `aur` (its packages, collected from the selected
/// `aur:` sections), then the file-triggered `cargo`, `npm` and `pixi`.
pub(super) fn lower_builders(
    name: &str,
    layer: &Layer,
    aur_packages: Vec<String>,
) -> Result<Vec<Step>, LowerError> {
    let mut steps = Vec::new();
    if !aur_packages.is_empty() {
        steps.push(
            step(
                Action::Builder {
                    builder: BuilderKind::Aur,
                    manifest: None,
                    packages: aur_packages.clone(),
                    names: Vec::new(),
                    crate_name: None,
                    files: Vec::new(),
                },
                Scope::System,
                vec![ReverseOp {
                    format: Some("pac".to_string()),
                    ..rev(ReverseKind::PackageRemove, Scope::System, aur_packages)
                }],
            )
            .in_builder(),
        );
    }
    let files = &layer.builder_files;
    let dir = &layer.source_dir;
    if files.cargo {
        // The installed binaries' names are only known after the build; `cargo install` records
        // them in `$CARGO_HOME/.crates.toml`, so there is no compile-time reverse op to offer.
        let crate_name = cargo_package_name(name, &dir.join("Cargo.toml"))?;
        let mut carried = vec!["Cargo.toml".to_string()];
        for extra in ["Cargo.lock", "build.rs"] {
            if dir.join(extra).is_file() {
                carried.push(extra.to_string());
            }
        }
        if dir.join("src").is_dir() {
            carried.extend(layer_files(name, dir, "src")?);
        }
        carried.sort();
        steps.push(builder_step(
            BuilderKind::Cargo,
            "Cargo.toml",
            (Vec::new(), Vec::new()),
            Some(crate_name),
            carried,
            Vec::new(),
        ));
    }
    if files.npm {
        let (specs, names) = npm_dependencies(name, &dir.join("package.json"))?;
        let reverse = if names.is_empty() {
            Vec::new()
        } else {
            vec![rev(ReverseKind::NpmUninstallG, Scope::User, names.clone())]
        };
        steps.push(builder_step(
            BuilderKind::Npm,
            "package.json",
            (specs, names),
            None,
            vec!["package.json".to_string()],
            reverse,
        ));
    }
    if let Some(manifest) = &files.pixi_manifest {
        // The original's pixi builder always installs into the `default` environment.
        let mut carried = vec![manifest.clone()];
        if files.pixi_lock {
            carried.push("pixi.lock".to_string());
        }
        if files.build_script {
            carried.push("build.sh".to_string());
        }
        carried.sort();
        steps.push(builder_step(
            BuilderKind::Pixi,
            manifest,
            (Vec::new(), Vec::new()),
            None,
            carried,
            vec![rev_extra(
                ReverseKind::PixiEnvRemove,
                Scope::User,
                vec!["default".to_string()],
                &[("layer", name)],
            )],
        ));
    }
    Ok(steps)
}

/// A file-triggered builder step (as the target user, in the builder venue); `packages` is the
/// pair (install specs, names).
fn builder_step(
    builder: BuilderKind,
    manifest: &str,
    (packages, names): (Vec<String>, Vec<String>),
    crate_name: Option<String>,
    files: Vec<String>,
    reverse: Vec<ReverseOp>,
) -> Step {
    step(
        Action::Builder {
            builder,
            manifest: Some(manifest.to_string()),
            packages,
            names,
            crate_name,
            files,
        },
        Scope::User,
        reverse,
    )
    .in_builder()
}

/// The regular files below `rel` of the layer directory `dir` (all of it for `""`), as paths
/// relative to `dir`, sorted. A symlink counts when it leads to a regular file.
pub(super) fn layer_files(layer: &str, dir: &Path, rel: &str) -> Result<Vec<String>, LowerError> {
    let base = if rel.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(rel)
    };
    let files = crate::walk::list_files(&base).map_err(|source| LowerError::LayerFiles {
        layer: layer.to_string(),
        path: base.clone(),
        source,
    })?;
    Ok(files
        .into_iter()
        .filter(|(_, path)| std::fs::metadata(path).is_ok_and(|m| m.is_file()))
        .map(|(name, _)| {
            if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            }
        })
        .collect())
}

/// `package.json` `dependencies` → install specs (`name@version`, bare name for `*`/empty) and the
/// names (for `npm uninstall -g`), in name order.
fn npm_dependencies(layer: &str, path: &Path) -> Result<(Vec<String>, Vec<String>), LowerError> {
    let text = std::fs::read_to_string(path).map_err(|source| LowerError::BuilderManifestRead {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let invalid =
        |reason: String, source: Option<serde_json::Error>| LowerError::BuilderManifestInvalid {
            layer: layer.to_string(),
            path: path.to_path_buf(),
            reason,
            source,
        };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid("not valid JSON".to_string(), Some(e)))?;
    let Some(deps) = value.get("dependencies") else {
        return Ok((Vec::new(), Vec::new()));
    };
    let Some(deps) = deps.as_object() else {
        return Err(invalid("`dependencies` is not an object".to_string(), None));
    };
    let mut sorted: Vec<(&String, &serde_json::Value)> = deps.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut specs = Vec::new();
    let mut names = Vec::new();
    for (name, version) in sorted {
        let Some(version) = version.as_str() else {
            return Err(invalid(
                format!("version of `{name}` is not a string"),
                None,
            ));
        };
        // A leading `-` would be read as an npm option.
        if name.is_empty() || name.starts_with('-') || name.chars().any(char::is_whitespace) {
            return Err(invalid(format!("bad package name `{name}`"), None));
        }
        if version.chars().any(char::is_control) {
            return Err(invalid(format!("bad version of `{name}`"), None));
        }
        specs.push(match version.trim() {
            "" | "*" => name.clone(),
            v => format!("{name}@{v}"),
        });
        names.push(name.clone());
    }
    Ok((specs, names))
}

/// `[package] name` of a Cargo.toml (a line scan: the only value needed, and no TOML crate).
fn cargo_package_name(layer: &str, path: &Path) -> Result<String, LowerError> {
    let text = std::fs::read_to_string(path).map_err(|source| LowerError::BuilderManifestRead {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if in_package {
            if let Some((key, value)) = line.split_once('=') {
                if key.trim() == "name" {
                    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                    return Ok(value.to_string());
                }
            }
        }
    }
    Err(LowerError::BuilderManifestInvalid {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        reason: "no `name` in its `[package]` table".to_string(),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::lower::fixture::*;

    #[test]
    fn invalid_package_json_is_an_error_naming_the_layer() {
        let mut fx = Fixture::new();
        let mut l = named("npmx");
        l.builder_files.npm = true;
        fx.add(
            l,
            &[("package.json", r#"{"dependencies":{"--global-style":"1"}}"#)],
        );
        let err = fx.lower(ARCH, ALL, &["npmx"]).unwrap_err().to_string();
        assert!(err.starts_with("layer `npmx`: invalid"), "{err}");
    }
}
