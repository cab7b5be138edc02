//! Stage `bundle` (reading back, unpacked): an unpacked bundle — `ov compile --out-dir`, or an
//! archive an operator extracted — for `ov verify` and `ov inspect`, with the same answers as
//! its archive would give.
//! Invariant: only plain directories and regular files are read, never through a link (a link
//! or a special file is refused, as in an archive), each file streamed (hashing) or, for the few
//! kept in memory, read within [`Limits::kept`]; the walk stops at [`Limits::entries`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::bundle_read::Limits;
use crate::manifest::{
    compare_sums, read_bundle_parts, InspectError, Inspection, VerifyError, VerifyReport,
};

/// Why an unpacked bundle cannot be read.
#[derive(Debug, Error)]
pub enum DirError {
    /// A file or directory cannot be read.
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A link, device, socket or fifo: a bundle holds none.
    #[error("`{}` is not a plain file or directory (a bundle holds no links or special files)", path.display())]
    NotPlain { path: PathBuf },
    /// More entries than [`Limits::entries`].
    #[error("`{}` holds more than {limit} entries", dir.display())]
    TooManyEntries { dir: PathBuf, limit: u64 },
    /// A file `ov` must keep in memory is larger than [`Limits::kept`].
    #[error("`{}` is larger than the {limit} bytes `ov` reads of one file", path.display())]
    KeptTooLarge { path: PathBuf, limit: u64 },
    /// Neither a bundle directory nor a directory holding exactly one.
    #[error("`{}` is not an unpacked bundle: it holds no SHA256SUMS and manifest.json, nor exactly one directory that does", dir.display())]
    NotABundle { dir: PathBuf },
    /// The bundle's files do not match `SHA256SUMS`.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The manifest cannot be read.
    #[error(transparent)]
    Inspect(#[from] InspectError),
}

/// The bundle directory `dir` names: `dir` itself when it holds `SHA256SUMS` and
/// `manifest.json`, else its one subdirectory that does (the `--out-dir` of `ov compile`).
pub fn bundle_root(dir: &Path) -> Result<PathBuf, DirError> {
    let is_bundle = |d: &Path| d.join("SHA256SUMS").is_file() && d.join("manifest.json").is_file();
    if is_bundle(dir) {
        return Ok(dir.to_path_buf());
    }
    let read = |source| DirError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(read)?;
        if meta.is_dir() && is_bundle(&path) {
            found.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([one]) => Ok(one),
        Err(_) => Err(DirError::NotABundle {
            dir: dir.to_path_buf(),
        }),
    }
}

/// Every regular file below `root`, as (path relative to it, `/`-separated, sorted), refusing
/// links and special files.
fn walk(root: &Path, limits: &Limits) -> Result<Vec<(String, PathBuf)>, DirError> {
    let mut out = Vec::new();
    let mut todo = vec![(String::new(), root.to_path_buf())];
    let mut seen: u64 = 0;
    while let Some((rel, dir)) = todo.pop() {
        let read = |source| DirError::Read {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            seen += 1;
            if seen > limits.entries {
                return Err(DirError::TooManyEntries {
                    dir: root.to_path_buf(),
                    limit: limits.entries,
                });
            }
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(&path).map_err(|source| DirError::Read {
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                todo.push((child, path));
            } else if meta.is_file() {
                out.push((child, path));
            } else {
                return Err(DirError::NotPlain { path });
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sha256_of(path: &Path) -> Result<[u8; 32], DirError> {
    let read = |source| DirError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(read)?;
    Ok(hasher.finalize().into())
}

fn read_kept(path: &Path, limits: &Limits) -> Result<Vec<u8>, DirError> {
    let read = |source| DirError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut data = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(limits.kept + 1)
        .read_to_end(&mut data)
        .map_err(read)?;
    if data.len() as u64 > limits.kept {
        return Err(DirError::KeptTooLarge {
            path: path.to_path_buf(),
            limit: limits.kept,
        });
    }
    Ok(data)
}

/// Check an unpacked bundle: every file against its `SHA256SUMS` (modified, missing and
/// unlisted files), as [`crate::manifest::verify_archive`] checks an archive's contents. There
/// is no archive, so no archive digest: [`VerifyReport::sha256`] is `None`.
pub fn verify_dir(dir: &Path, limits: &Limits) -> Result<VerifyReport, DirError> {
    let root = bundle_root(dir)?;
    let files = walk(&root, limits)?;
    let mut digests_owned: BTreeMap<String, [u8; 32]> = BTreeMap::new();
    for (rel, path) in &files {
        if rel != "SHA256SUMS" {
            digests_owned.insert(rel.clone(), sha256_of(path)?);
        }
    }
    let mut digests: BTreeMap<&str, Option<&[u8; 32]>> = digests_owned
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v)))
        .collect();
    digests.insert("SHA256SUMS", None);
    let sums = read_kept(&root.join("SHA256SUMS"), limits)?;
    let files_checked = compare_sums(&sums, &digests)?;
    let manifest = read_kept(&root.join("manifest.json"), limits)?;
    let deploy = serde_json::from_slice::<crate::manifest::Manifest>(&manifest)
        .ok()
        .map(|m| m.deploy.name);
    let sig_path = root.join(crate::sign::SIG_FILE);
    let signature = match std::fs::symlink_metadata(&sig_path) {
        Ok(m) if m.is_file() => Some(read_kept(&sig_path, limits)?),
        _ => None,
    };
    Ok(VerifyReport {
        sha256: None,
        top: top_name(&root),
        files_checked,
        deploy,
        sums,
        signature,
    })
}

fn top_name(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Read an unpacked bundle as [`crate::manifest::inspect`] reads an archive: its manifest, the
/// paths of its files and, if `file` is given, that one file.
pub fn inspect_dir(
    dir: &Path,
    file: Option<&str>,
    limits: &Limits,
) -> Result<Inspection, DirError> {
    let root = bundle_root(dir)?;
    let top = top_name(&root);
    let files = walk(&root, limits)?;
    let mut kept = BTreeMap::new();
    let wanted = file.map(|f| {
        let f = f.trim_start_matches("./");
        f.strip_prefix(&format!("{top}/")).unwrap_or(f).to_string()
    });
    for (rel, path) in &files {
        if rel == "manifest.json" || wanted.as_deref() == Some(rel.as_str()) {
            kept.insert(rel.clone(), read_kept(path, limits)?);
        }
    }
    let paths = files.into_iter().map(|(rel, _)| rel).collect();
    Ok(read_bundle_parts(top, paths, kept)?)
}
