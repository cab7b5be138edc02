//! Stage `runner`, bundle archive (local side): checks a bundle against the `.sha256` beside it
//! and reads what the pusher needs from it (top directory, typed manifest) with the compiler's
//! one bundle reader (`manifest::read_bundle`), streaming.
//! Invariant: nothing is sent anywhere unless the archive matches its `.sha256`, has exactly one
//! top directory holding `run.sh` and a `manifest.json` of a format this `ov` reads, only
//! directories and regular files that stay inside it, and stays within the `bundle_read` limits;
//! only `manifest.json` and `SHA256SUMS` are held in memory.

use std::io::Read;
use std::path::{Path, PathBuf};

use ov_compiler::bundle_read::{ArchiveError, Limits};
use ov_compiler::manifest::{read_bundle, InspectError, Manifest, ReadOptions};
use ov_compiler::remote::RunShOptions;
use sha2::{Digest, Sha256};

use crate::exit::{Exit, HasExit};

/// A verified bundle archive.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    /// The archive.
    pub path: PathBuf,
    pub file_name: String,
    /// Its sha256 (verified against the `.sha256` file).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The single top directory inside.
    pub top: String,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// The options its `run.sh` takes that `ov push` passes only to a `run.sh` that has them.
    pub run_sh: RunShOptions,
}

/// Why a bundle cannot be pushed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading failed.
    #[error("cannot read `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No checksum file.
    #[error("no checksum file `{path}` beside the bundle (`ov compile` writes it; pass the `.tar.gz` it sits next to)")]
    NoChecksum {
        /// Expected path.
        path: PathBuf,
    },
    /// The checksum file is not `sha256sum` output.
    #[error("`{path}` does not hold a sha256 checksum")]
    BadChecksum {
        /// The file.
        path: PathBuf,
    },
    /// The archive changed after compile.
    #[error("bundle `{path}` does not match its checksum (expected {expected}, got {actual}): it was altered after compile; refusing to push")]
    Mismatch {
        /// The archive.
        path: PathBuf,
        /// From the `.sha256` file.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The archive cannot be read, holds unsafe entries, or is beyond the limits.
    #[error("cannot read bundle `{path}`")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// The archive's `manifest.json` is missing, unreadable or of a newer format.
    #[error("cannot read the manifest of bundle `{path}`")]
    Manifest {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: InspectError,
    },
    /// The archive's layout is not a bundle's.
    #[error("`{path}` is not an ov bundle: {reason}")]
    Layout {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl HasExit for BundleError {
    fn exit(&self) -> Exit {
        match self {
            BundleError::Mismatch { .. } => Exit::Integrity,
            BundleError::Archive { source, .. } if source.is_integrity() => Exit::Integrity,
            _ => Exit::InvalidInput,
        }
    }
}

/// `<archive>.sha256`.
pub fn checksum_path(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(".sha256");
    PathBuf::from(s)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Verify `path` against its `.sha256` and read its layout and manifest, within the default
/// `bundle_read` limits.
pub fn open_bundle(path: &Path) -> Result<BundleInfo, BundleError> {
    open_bundle_with(path, &Limits::default())
}

/// [`open_bundle`] within `limits`.
pub fn open_bundle_with(path: &Path, limits: &Limits) -> Result<BundleInfo, BundleError> {
    let sum_path = checksum_path(path);
    let sum_text = match std::fs::read_to_string(&sum_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::NoChecksum { path: sum_path })
        }
        Err(source) => {
            return Err(BundleError::Io {
                path: sum_path,
                source,
            })
        }
    };
    let expected = sum_text
        .split_whitespace()
        .next()
        .map(|s| s.to_ascii_lowercase())
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| BundleError::BadChecksum {
            path: sum_path.clone(),
        })?;
    let (actual, size) = sha256_file(path)?;
    if actual != expected {
        return Err(BundleError::Mismatch {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    let layout = |reason: String| BundleError::Layout {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let read = read_bundle(
        std::io::BufReader::new(f),
        &ReadOptions {
            limits: *limits,
            // (its text says which options it takes: read here, not again on the target)
            file: Some("run.sh"),
            bound_by_sums: true,
        },
    )
    .map_err(|e| match e {
        InspectError::Archive(source) => BundleError::Archive {
            path: path.to_path_buf(),
            source,
        },
        source => BundleError::Manifest {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if !read.paths().any(|p| p == "run.sh") {
        return Err(layout(format!("no `{}/run.sh`", read.top)));
    }
    let run_sh = read
        .script("run.sh")
        .map(RunShOptions::of)
        .unwrap_or_default();
    Ok(BundleInfo {
        file_name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle.tar.gz".into()),
        path: path.to_path_buf(),
        sha256: actual,
        size,
        top: read.top,
        run_sh,
        manifest: read.manifest,
    })
}

/// A manifest of the shape `ov compile` writes, for the runner's unit tests: `layers` as
/// (name, digest), in install order.
/// The steps a closed gate left out of a bundle, per gate (the flag without dashes that opens
/// it, e.g. `allow-root-tasks`): how many, and in which layers.
pub fn gated_off(manifest: &Manifest) -> std::collections::BTreeMap<String, (usize, Vec<String>)> {
    let mut out: std::collections::BTreeMap<String, (usize, Vec<String>)> = Default::default();
    for layer in &manifest.layers {
        for step in &layer.skipped {
            let Some(gate) = &step.enable_with else {
                continue;
            };
            let entry = out.entry(gate.clone()).or_default();
            entry.0 += 1;
            if !entry.1.contains(&layer.name) {
                entry.1.push(layer.name.clone());
            }
        }
    }
    out
}

/// One line saying which steps closed gates left out and the flag that opens each gate
/// (`None`: none left out), e.g. `2 step(s) left out by closed gates: 2 need
/// --allow-root-tasks (e2e-task); \`ov plan\` lists them`.
pub fn gated_off_summary(manifest: &Manifest) -> Option<String> {
    let gated = gated_off(manifest);
    let total: usize = gated.values().map(|(n, _)| n).sum();
    if total == 0 {
        return None;
    }
    let parts: Vec<String> = gated
        .iter()
        .map(|(gate, (n, layers))| {
            format!(
                "{n} need{} --{gate} ({})",
                if *n == 1 { "s" } else { "" },
                layers.join(", ")
            )
        })
        .collect();
    Some(format!(
        "{total} step(s) left out because a gate is closed: {}; `ov plan` lists them",
        parts.join(", ")
    ))
}

#[cfg(test)]
pub(crate) fn test_manifest(
    deploy: &str,
    id: &str,
    user: &str,
    layers: &[(&str, &str)],
) -> Manifest {
    use ov_compiler::manifest::{ManifestDeploy, ManifestGates, ManifestLayer, BUNDLE_FORMAT};
    Manifest {
        format_version: BUNDLE_FORMAT,
        ov_version: "test".into(),
        deploy: ManifestDeploy {
            name: deploy.into(),
            id: id.into(),
            target: deploy.into(),
            distro: vec!["debian".into()],
            package_formats: vec!["deb".into()],
            user: Some(user.into()),
            requested: Vec::new(),
        },
        gates: ManifestGates::default(),
        layers: layers
            .iter()
            .enumerate()
            .map(|(i, (name, digest))| ManifestLayer {
                name: (*name).into(),
                version: None,
                source: format!("layers/{name}"),
                origin: None,
                dir: format!("layers/{:02}-{name}", i + 1),
                digest: (*digest).into(),
                scripts: Vec::new(),
                undo: format!("layers/{:02}-{name}/undo.sh", i + 1),
                payload: Vec::new(),
                skipped: Vec::new(),
                reverse_ops: Vec::new(),
                checks: Vec::new(),
            })
            .collect(),
        overridden_templates: Vec::new(),
        package_batches: Vec::new(),
        mtime: 0,
        provenance: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn make(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("b.tar.gz");
        let f = std::fs::File::create(&path).expect("create");
        let mut b = tar::Builder::new(GzEncoder::new(f, flate2::Compression::default()));
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body.as_bytes())
                .expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gz");
        let (sum, _) = sha256_file(&path).expect("sum");
        std::fs::write(checksum_path(&path), format!("{sum}  b.tar.gz\n")).expect("write sum");
        path
    }

    /// `manifest.json` as `ov compile` writes it.
    fn manifest(layers: &[(&str, &str)]) -> String {
        serde_json::to_string(&test_manifest("vm:x", "abc", "u", layers)).expect("json")
    }

    #[test]
    fn reads_manifest_and_checks_sum() {
        let d = tempfile::tempdir().expect("tempdir");
        let m = manifest(&[("a", "d1"), ("b", "d2")]);
        let p = make(
            d.path(),
            &[("vm-x/run.sh", "#!/bin/bash\n"), ("vm-x/manifest.json", &m)],
        );
        let b = open_bundle(&p).expect("open");
        assert_eq!(b.top, "vm-x");
        assert_eq!(b.manifest.deploy.id, "abc");
        let layers: Vec<(&str, &str)> = b
            .manifest
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.digest.as_str()))
            .collect();
        assert_eq!(layers, vec![("a", "d1"), ("b", "d2")]);
        // One changed byte after compile: refused.
        let mut bytes = std::fs::read(&p).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, bytes).expect("write");
        let e = open_bundle(&p).expect_err("tampered");
        assert_eq!(e.exit(), Exit::Integrity);
    }

    #[test]
    fn reads_the_deploy_object_ov_compile_writes_and_nothing_else() {
        let d = tempfile::tempdir().expect("tempdir");
        let m = manifest(&[("a", "d1")]);
        let p = make(
            d.path(),
            &[("vm-x/run.sh", "#!/bin/bash\n"), ("vm-x/manifest.json", &m)],
        );
        let b = open_bundle(&p).expect("open");
        assert_eq!(b.manifest.deploy.name, "vm:x");
        assert_eq!(b.manifest.deploy.id, "abc");
        assert_eq!(b.manifest.deploy.user.as_deref(), Some("u"));
        // A flat `deploy`/`deploy_id`/`user`, which `ov compile` never writes, is refused, as is
        // a bundle without a manifest: `inspect`, `verify` and `push` read one shape.
        let flat = r#"{"deploy":"vm:x","deploy_id":"abc","user":"u","layers":[{"name":"a","digest":"d1"}]}"#;
        for entries in [
            vec![
                ("vm-x/run.sh", "#!/bin/bash\n"),
                ("vm-x/manifest.json", flat),
            ],
            vec![("vm-x/run.sh", "#!/bin/bash\n")],
        ] {
            let p = make(d.path(), &entries);
            let e = open_bundle(&p).expect_err("not a manifest ov compile writes");
            assert!(matches!(e, BundleError::Manifest { .. }), "{e}");
            assert_eq!(e.exit(), Exit::InvalidInput);
        }
    }

    #[test]
    fn refuses_bad_layouts() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = make(d.path(), &[("a/run.sh", "x"), ("b/x", "y")]);
        let e = open_bundle(&p).expect_err("two tops");
        assert!(
            matches!(&e, BundleError::Archive { source: ArchiveError::TopDirectory { found }, .. } if found == "a, b"),
            "{e}"
        );
        assert_eq!(e.exit(), Exit::InvalidInput);
        let m = manifest(&[]);
        let p = make(d.path(), &[("a/x", "x"), ("a/manifest.json", &m)]);
        assert!(open_bundle(&p)
            .expect_err("no run.sh")
            .to_string()
            .contains("run.sh"));
        std::fs::remove_file(checksum_path(&p)).expect("rm");
        assert!(matches!(
            open_bundle(&p),
            Err(BundleError::NoChecksum { .. })
        ));
    }

    #[test]
    fn refuses_what_is_beyond_the_limits_or_sums_before_reading_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let big = "z".repeat(5000);
        let m = manifest(&[]);
        let p = make(
            d.path(),
            &[
                ("vm-x/manifest.json", &m),
                ("vm-x/run.sh", "#!/bin/bash\n"),
                ("vm-x/files/l/big", &big),
            ],
        );
        let small = Limits {
            entry: 4096,
            ..Limits::default()
        };
        let e = open_bundle_with(&p, &small).expect_err("entry over the limit");
        assert!(
            matches!(&e, BundleError::Archive { source: ArchiveError::EntryTooLarge { path, size: 5000, limit: 4096 }, .. } if path == "vm-x/files/l/big"),
            "{e}"
        );
        assert_eq!(e.exit(), Exit::InvalidInput);
        open_bundle(&p).expect("within the default limits");

        // A file SHA256SUMS (read first) does not list: refused as an integrity failure.
        let sums = format!(
            "{}  run.sh\n",
            hex::encode(Sha256::digest(b"#!/bin/bash\n"))
        );
        let p = make(
            d.path(),
            &[
                ("vm-x/SHA256SUMS", &sums),
                ("vm-x/run.sh", "#!/bin/bash\n"),
                ("vm-x/files/l/big", &big),
            ],
        );
        let e = open_bundle(&p).expect_err("not in SHA256SUMS");
        assert!(
            matches!(&e, BundleError::Archive { source: ArchiveError::BeyondSums { path, size: 5000, listed: false }, .. } if path == "files/l/big"),
            "{e}"
        );
        assert_eq!(e.exit(), Exit::Integrity);
    }
}
