//! Stage `bundle` (manifest): the `manifest.json` types written into every bundle and read back by
//! `ov inspect` / `ov verify`; invariant: a bundle is only reported intact when its archive digest
//! matches the `.sha256` text and every file matches `SHA256SUMS`, with none missing or extra.
//!
//! The types mirror the plan (`crate::plan`) with plain strings instead of enums, so they can be
//! deserialised from any bundle of the same format without the compiler's internal types.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use crate::batch::PackageBatch;

/// The bundle format this compiler writes (also `plan::FORMAT_VERSION`).
pub const BUNDLE_FORMAT: u32 = crate::plan::FORMAT_VERSION;

/// The whole `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bundle format version ([`BUNDLE_FORMAT`]).
    pub format_version: u32,
    /// The `ov` version that wrote the bundle.
    pub ov_version: String,
    /// What is deployed, where, for whom.
    pub deploy: ManifestDeploy,
    /// The gates opened for this compile.
    pub gates: ManifestGates,
    /// Layers in install order.
    pub layers: Vec<ManifestLayer>,
    /// Templates replaced by `--templates DIR`, with the sha256 of each replacement.
    pub overridden_templates: Vec<OverriddenTemplate>,
    /// Package installs of consecutive layers that share one transaction when every layer runs
    /// ([`crate::batch`]); run.sh applies the same rule to the layers it really runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub package_batches: Vec<PackageBatch>,
    /// The modification time stamped on every archive entry (seconds since the epoch).
    pub mtime: u64,
    /// How the bundle was made: `ov` version, the project's commit, the signer, the
    /// `SOURCE_DATE_EPOCH` (absent in bundles of an older `ov`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

pub use crate::sign::SignerInfo;

/// How a bundle was made (issue: trust what runs). Every field is an input of the compile, so
/// identical inputs still give a byte-identical bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The `ov` version that compiled the bundle.
    pub ov_version: String,
    /// `SOURCE_DATE_EPOCH` as given to the compile; absent when it was not set (the archive's
    /// entries then carry [`crate::bundle::DEFAULT_MTIME`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    /// The project's git commit, when the project is in a git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitProvenance>,
    /// The key that signed `SHA256SUMS` (`SHA256SUMS.sig`), when the bundle is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<SignerInfo>,
}

/// The project's git state at compile time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitProvenance {
    /// `HEAD`'s commit id (hex).
    pub commit: String,
    /// Whether tracked files differed from `HEAD` (untracked files do not count: the bundle
    /// `ov compile` writes into the project must not make the next compile differ).
    pub dirty: bool,
}

/// Where a layer's files came from (the plan's own record: a project directory, or a git
/// repository at a locked commit), tagged by `kind`.
pub use crate::origin::LayerOrigin;

impl Manifest {
    /// The human listing of a bundle, as `run.sh --list` and `ov inspect` print it: layers, their
    /// scripts and steps, and the skipped steps with their reasons.
    pub fn listing(&self) -> String {
        let mut out = format!(
            "deploy {} (id {}), {} layer(s), target user: {}\n",
            self.deploy.name,
            self.deploy.id,
            self.layers.len(),
            self.deploy
                .user
                .as_deref()
                .unwrap_or("--user NAME, else $SUDO_USER")
        );
        for (i, l) in self.layers.iter().enumerate() {
            out.push_str(&format!(
                "{:>3}. {}  (digest {})\n",
                i + 1,
                l.name,
                &l.digest[..12.min(l.digest.len())]
            ));
            for s in &l.scripts {
                out.push_str(&format!("       {}  [{}, {}]\n", s.path, s.scope, s.venue));
                for step in &s.steps {
                    out.push_str(&format!("         - {step}\n"));
                }
            }
            for s in &l.skipped {
                out.push_str(&format!(
                    "       skipped: {} {}: {}\n",
                    s.kind, s.what, s.reason
                ));
            }
            for c in &l.checks {
                out.push_str(&format!("       check: {} [{}, {}]", c.id, c.kind, c.scope));
                if let Some(why) = &c.skip {
                    out.push_str(&format!(" skipped: {why}"));
                }
                out.push('\n');
            }
        }
        for b in &self.package_batches {
            out.push_str(&b.describe());
            out.push('\n');
        }
        out.trim_end().to_string()
    }

    /// How the bundle was made, for `ov inspect`: one `key: value` line each (empty for a bundle
    /// of an older `ov`, which records none).
    pub fn provenance_text(&self) -> String {
        let Some(p) = &self.provenance else {
            return String::new();
        };
        let mut out = format!("compiled by: ov {}\n", p.ov_version);
        match &p.git {
            Some(g) => out.push_str(&format!(
                "project commit: {}{}\n",
                g.commit,
                if g.dirty { " (work tree dirty)" } else { "" }
            )),
            None => out.push_str("project commit: none (not a git work tree)\n"),
        }
        match p.source_date_epoch {
            Some(e) => out.push_str(&format!("SOURCE_DATE_EPOCH: {e}\n")),
            None => out.push_str(&format!(
                "SOURCE_DATE_EPOCH: not set (entries dated {})\n",
                self.mtime
            )),
        }
        match &p.signer {
            Some(s) => out.push_str(&format!(
                "signed by: {} {}{}\n",
                s.fingerprint,
                s.algorithm,
                if s.comment.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.comment)
                }
            )),
            None => out.push_str("signed by: unsigned\n"),
        }
        for l in &self.layers {
            if let Some(o) = &l.origin {
                out.push_str(&format!("layer {}: {o}\n", l.name));
            }
        }
        out
    }
}

/// The deploy of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDeploy {
    /// Canonical deploy name, e.g. `vm:arch` or `host`.
    pub name: String,
    /// Deploy id in the target's ledger (16 hex digits).
    pub id: String,
    /// The target, `vm:<vm>` or `host`.
    pub target: String,
    /// Distro tags, most specific first.
    pub distro: Vec<String>,
    /// Package formats, primary first.
    pub package_formats: Vec<String>,
    /// The target account, if the deploy names one (else `--user` / `$SUDO_USER` on the target).
    pub user: Option<String>,
    /// The layers that were asked for, before resolution.
    pub requested: Vec<String>,
}

/// The gates (opt-ins) of a compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ManifestGates {
    /// `--allow-repo-changes`.
    pub allow_repo_changes: bool,
    /// `--allow-root-tasks`.
    pub allow_root_tasks: bool,
    /// `--with-services`.
    pub with_services: bool,
}

/// One layer of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestLayer {
    /// Layer name.
    pub name: String,
    /// `version:` of the layer, if any.
    pub version: Option<String>,
    /// The layer directory relative to the project root.
    pub source: String,
    /// Where the layer came from (absent in bundles of an older `ov`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<LayerOrigin>,
    /// Its directory inside the bundle, e.g. `layers/01-ripgrep`.
    pub dir: String,
    /// Content digest: sha256 over the layer's scripts, undo script and payload (see
    /// `docs/bundle-runtime.md`); the ledger compares it to decide whether to skip the layer.
    pub digest: String,
    /// Scripts in run order.
    pub scripts: Vec<ManifestScript>,
    /// Path of the layer's undo script inside the bundle.
    pub undo: String,
    /// Payload files inside the bundle (`files/<layer>/…`).
    pub payload: Vec<String>,
    /// Steps that do not run on this target, and why.
    pub skipped: Vec<SkippedStep>,
    /// Reverse operations of the steps that run, in step order (teardown runs them last-to-first).
    pub reverse_ops: Vec<ManifestReverseOp>,
    /// The layer's own checks (`tests:`), run by `run.sh --test` from `test.sh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ManifestCheck>,
}

/// One check of a layer, as the bundle carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestCheck {
    /// The check's id.
    pub id: String,
    /// `file`, `command`, `package`, `service`, `addr`, `http`, `mcp`, `k8s`.
    pub kind: String,
    /// `build` or `deploy`.
    pub scope: String,
    /// Why it does not run on this target, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
}

/// One step script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestScript {
    /// File name inside the layer directory, e.g. `01-system.sh`.
    pub file: String,
    /// Path inside the bundle.
    pub path: String,
    /// `system`, `user` or `user-profile`.
    pub scope: String,
    /// `host-native` or `container-builder`.
    pub venue: String,
    /// One-line summaries of its steps.
    pub steps: Vec<String>,
}

/// A step left out of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedStep {
    /// Step kind, e.g. `ServiceCustom`.
    pub kind: String,
    pub scope: String,
    /// What it would have done.
    pub what: String,
    /// Why it does not run.
    pub reason: String,
    /// The gate (CLI flag without dashes) that would enable it.
    pub enable_with: Option<String>,
}

/// A reverse operation as recorded in the manifest and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestReverseOp {
    /// Kind, e.g. `package-remove`.
    pub kind: String,
    /// Package format (package-remove).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Paths, packages, units or coprs.
    pub targets: Vec<String>,
    /// Who performs it.
    pub scope: String,
    /// Extra details.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// A template replaced by `--templates DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverriddenTemplate {
    /// Template name, e.g. `steps/task.sh.j2`.
    pub name: String,
    /// sha256 of the replacement text.
    pub sha256: String,
}

pub use crate::bundle_read::ArchiveError;
use crate::bundle_read::{scan, Limits, ScanOptions};

/// What [`verify_archive`] checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The archive's sha256 (matches the `.sha256` file); `None` for an unpacked bundle.
    pub sha256: Option<String>,
    /// The top directory.
    pub top: String,
    /// Number of files checked against `SHA256SUMS`.
    pub files_checked: usize,
    /// The deploy named in the manifest, if the manifest could be read.
    pub deploy: Option<String>,
    /// The bytes of `SHA256SUMS` (what a signature covers).
    #[serde(skip)]
    pub sums: Vec<u8>,
    /// The bytes of `SHA256SUMS.sig`, when the bundle carries one.
    #[serde(skip)]
    pub signature: Option<Vec<u8>>,
}

/// Why a bundle failed verification.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The `.sha256` text holds no sha256.
    #[error("the checksum file does not start with a sha256 (64 hex digits)")]
    MalformedChecksum,
    /// The archive's digest differs from the `.sha256` file.
    #[error("archive digest mismatch: expected {expected}, found {actual}")]
    ArchiveDigest {
        /// From the `.sha256` file.
        expected: String,
        /// Of the archive bytes.
        actual: String,
    },
    /// The archive cannot be read or holds unsafe entries.
    #[error("invalid bundle archive")]
    Archive(#[source] ArchiveError),
    /// No `SHA256SUMS` in the bundle.
    #[error("the bundle has no SHA256SUMS")]
    NoSums,
    /// A line of `SHA256SUMS` is not `<sha256>  <path>`.
    #[error("malformed SHA256SUMS line {line}: `{text}`")]
    MalformedSums {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// Files differ from `SHA256SUMS`, are missing, or are not listed.
    #[error("bundle contents do not match SHA256SUMS: {}", contents_summary(.mismatched, .missing, .extra))]
    Contents {
        /// Files whose digest differs.
        mismatched: Vec<String>,
        /// Listed but absent.
        missing: Vec<String>,
        /// Present but not listed.
        extra: Vec<String>,
    },
}

fn contents_summary(mismatched: &[String], missing: &[String], extra: &[String]) -> String {
    let mut parts = Vec::new();
    for (label, list) in [
        ("modified", mismatched),
        ("missing", missing),
        ("not listed", extra),
    ] {
        if !list.is_empty() {
            let names: Vec<String> = list.iter().take(5).map(|n| format!("`{n}`")).collect();
            let more = if list.len() > 5 {
                format!(" and {} more", list.len() - 5)
            } else {
                String::new()
            };
            parts.push(format!("{label}: {}{more}", names.join(", ")));
        }
    }
    parts.join("; ")
}

/// Parse `SHA256SUMS` text into (path → lowercase hex digest).
pub fn parse_sums(text: &str) -> Result<BTreeMap<String, String>, VerifyError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || VerifyError::MalformedSums {
            line: i + 1,
            text: line.to_string(),
        };
        let (hash, path) = line.split_once("  ").ok_or_else(bad)?;
        if !is_sha256_hex(hash) || path.is_empty() {
            return Err(bad());
        }
        if out
            .insert(path.to_string(), hash.to_ascii_lowercase())
            .is_some()
        {
            return Err(bad());
        }
    }
    Ok(out)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Check a bundle: the archive's sha256 against the text of its `.sha256` file (`<hex>  <name>`),
/// then every file inside against `SHA256SUMS`, reporting modified, missing and unlisted files.
/// The archive is read twice, streaming (digest, then contents), within the default [`Limits`].
pub fn verify_archive(
    archive: impl Read + Seek,
    expected_sha256_text: &str,
) -> Result<VerifyReport, VerifyError> {
    verify_archive_with(archive, expected_sha256_text, &Limits::default())
}

/// [`verify_archive`] within `limits`.
pub fn verify_archive_with(
    mut archive: impl Read + Seek,
    expected_sha256_text: &str,
    limits: &Limits,
) -> Result<VerifyReport, VerifyError> {
    let expected = expected_sha256_text
        .split_whitespace()
        .next()
        .filter(|h| is_sha256_hex(h))
        .ok_or(VerifyError::MalformedChecksum)?
        .to_ascii_lowercase();
    let mut hasher = Sha256::new();
    std::io::copy(&mut archive, &mut hasher)
        .map_err(|e| VerifyError::Archive(ArchiveError::Read(e)))?;
    let actual = hex::encode(hasher.finalize());
    if expected != actual {
        return Err(VerifyError::ArchiveDigest { expected, actual });
    }
    archive
        .seek(SeekFrom::Start(0))
        .map_err(|e| VerifyError::Archive(ArchiveError::Read(e)))?;
    let keep = |_: &str, rel: &str| {
        rel == "SHA256SUMS" || rel == "manifest.json" || rel == crate::sign::SIG_FILE
    };
    let contents = scan(
        archive,
        &ScanOptions {
            limits: *limits,
            hash: true,
            bound_by_sums: true,
            keep: &keep,
        },
    )
    .map_err(VerifyError::Archive)?;
    let sums_bytes = contents.kept("SHA256SUMS").ok_or(VerifyError::NoSums)?;
    let digests: BTreeMap<&str, Option<&[u8; 32]>> = contents
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_ref()))
        .collect();
    let files_checked = compare_sums(sums_bytes, &digests)?;
    let deploy = contents
        .kept("manifest.json")
        .and_then(|d| serde_json::from_slice::<Manifest>(d).ok())
        .map(|m| m.deploy.name);
    Ok(VerifyReport {
        sha256: Some(actual),
        files_checked,
        deploy,
        sums: sums_bytes.to_vec(),
        signature: contents.kept(crate::sign::SIG_FILE).map(<[u8]>::to_vec),
        top: contents.top,
    })
}

/// Compare `SHA256SUMS` (its bytes) with the files found (path → digest, `None` when it was not
/// hashed): every listed file present with its digest, nothing present unlisted but
/// `SHA256SUMS` itself and its signature `SHA256SUMS.sig`. Returns how many files were checked.
pub(crate) fn compare_sums(
    sums_bytes: &[u8],
    digests: &BTreeMap<&str, Option<&[u8; 32]>>,
) -> Result<usize, VerifyError> {
    let sums = parse_sums(&String::from_utf8_lossy(sums_bytes))?;
    let mut mismatched = Vec::new();
    let mut missing = Vec::new();
    for (path, hash) in &sums {
        match digests.get(path.as_str()) {
            None => missing.push(path.clone()),
            Some(d) if d.map(hex::encode).as_deref() != Some(hash.as_str()) => {
                mismatched.push(path.clone())
            }
            Some(_) => {}
        }
    }
    let extra: Vec<String> = digests
        .keys()
        .filter(|p| **p != "SHA256SUMS" && **p != crate::sign::SIG_FILE && !sums.contains_key(**p))
        .map(|p| p.to_string())
        .collect();
    if !(mismatched.is_empty() && missing.is_empty() && extra.is_empty()) {
        return Err(VerifyError::Contents {
            mismatched,
            missing,
            extra,
        });
    }
    Ok(sums.len())
}

/// Why a bundle could not be inspected.
#[derive(Debug, Error)]
pub enum InspectError {
    /// The archive cannot be read or holds unsafe entries.
    #[error("invalid bundle archive")]
    Archive(#[source] ArchiveError),
    /// No `manifest.json`.
    #[error("the bundle `{top}` has no manifest.json")]
    NoManifest {
        /// The top directory.
        top: String,
    },
    /// `manifest.json` is not a manifest of a format this `ov` reads.
    #[error("cannot read manifest.json of `{top}`")]
    Manifest {
        /// The top directory.
        top: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A newer bundle format.
    #[error("bundle `{top}` has format {found}; this ov reads format {BUNDLE_FORMAT}")]
    Format {
        /// The top directory.
        top: String,
        /// The format found.
        found: u32,
    },
}

/// A bundle read for `ov inspect`: its manifest, the paths of its files, and the one file asked
/// for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The top directory.
    pub top: String,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Every file's path relative to the top directory, in archive order.
    pub paths: Vec<String>,
    /// The files read into memory (path relative to the top directory → bytes): `manifest.json`,
    /// the file passed to [`inspect`] if the bundle has it, and `SHA256SUMS` when it bounded the
    /// read ([`ReadOptions::bound_by_sums`]).
    pub files: BTreeMap<String, Vec<u8>>,
}

/// `path` as a path below the bundle's top directory: `./` and a leading `<top>/` are dropped.
fn below_top<'p>(path: &'p str, top: &str) -> &'p str {
    let path = path.trim_start_matches("./");
    path.strip_prefix(top)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path)
}

impl Inspection {
    /// The text of the file passed to [`inspect`], by its path inside the bundle
    /// (`layers/01-x/01-system.sh`, also accepted with the top directory in front); `None` if it
    /// was not asked for, is absent or is not UTF-8.
    pub fn script(&self, path: &str) -> Option<&str> {
        self.files
            .get(below_top(path, &self.top))
            .and_then(|d| std::str::from_utf8(d).ok())
    }

    /// Paths of every file, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(String::as_str)
    }
}

/// Read a bundle's manifest, the paths of its files and, if `file` is given, that one file (no
/// integrity check: use [`verify_archive`] for that). Streams within the default [`Limits`].
pub fn inspect(archive: impl Read, file: Option<&str>) -> Result<Inspection, InspectError> {
    inspect_with(archive, file, &Limits::default())
}

/// [`inspect`] within `limits`.
pub fn inspect_with(
    archive: impl Read,
    file: Option<&str>,
    limits: &Limits,
) -> Result<Inspection, InspectError> {
    read_bundle(
        archive,
        &ReadOptions {
            limits: *limits,
            file,
            bound_by_sums: false,
        },
    )
}

/// How [`read_bundle`] reads an archive.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions<'a> {
    /// How much the archive may hold.
    pub limits: Limits,
    /// One more file to keep in memory besides `manifest.json` (path inside the bundle).
    pub file: Option<&'a str>,
    /// Refuse, before reading it, an entry `SHA256SUMS` (read first) does not list or lists with
    /// another size: what `ov push` needs, since it sends the archive on to a target.
    pub bound_by_sums: bool,
}

/// The one typed reader of a bundle archive, for `ov inspect`, `ov verify` and `ov push`: streams
/// it within `opts.limits` (one top directory of plain directories and regular files, no links),
/// keeps `manifest.json` and `opts.file`, and parses the manifest into [`Manifest`], refusing a
/// newer format. No digest is checked here: [`verify_archive`] does that.
pub fn read_bundle(archive: impl Read, opts: &ReadOptions<'_>) -> Result<Inspection, InspectError> {
    let file = opts.file;
    // `SHA256SUMS` bounds what follows it only when it is kept.
    let keep = |top: &str, rel: &str| {
        rel == "manifest.json"
            || (opts.bound_by_sums && rel == "SHA256SUMS")
            || file.is_some_and(|f| below_top(f, top) == rel)
    };
    let contents = scan(
        archive,
        &ScanOptions {
            limits: opts.limits,
            hash: false,
            bound_by_sums: opts.bound_by_sums,
            keep: &keep,
        },
    )
    .map_err(InspectError::Archive)?;
    let paths = contents.files.into_iter().map(|f| f.path).collect();
    read_bundle_parts(contents.top, paths, contents.kept)
}

/// The [`Inspection`] of a bundle read by [`read_bundle`] or from a directory
/// ([`crate::bundle_dir`]): its top directory, every path, and the files kept (`manifest.json`
/// among them), whose manifest is parsed here, refusing a newer format.
pub(crate) fn read_bundle_parts(
    top: String,
    paths: Vec<String>,
    files: BTreeMap<String, Vec<u8>>,
) -> Result<Inspection, InspectError> {
    let raw = files
        .get("manifest.json")
        .ok_or_else(|| InspectError::NoManifest { top: top.clone() })?;
    #[derive(Deserialize)]
    struct FormatOnly {
        format_version: u32,
    }
    if let Ok(f) = serde_json::from_slice::<FormatOnly>(raw) {
        if f.format_version > BUNDLE_FORMAT {
            return Err(InspectError::Format {
                top,
                found: f.format_version,
            });
        }
    }
    let manifest = serde_json::from_slice(raw).map_err(|source| InspectError::Manifest {
        top: top.clone(),
        source,
    })?;
    Ok(Inspection {
        top,
        manifest,
        paths,
        files,
    })
}
