//! Stage `bundle`: InstallPlan + rendered scripts → one deterministic `.tar.gz` with `run.sh`,
//! `undo.sh`, `lib.sh`, `README.txt`, `manifest.json` and `SHA256SUMS`; invariant: the same inputs
//! and `ov` version give a byte-identical archive (sorted entries, fixed mtime, uid/gid 0, no user
//! names, normalised modes, gzip header mtime 0, fixed compression level).
//!
//! The layout and the run-time contract are `docs/bundle-runtime.md`. The tar and gzip encoders
//! are the `tar` crate and [`crate::gzip`]; this module only decides what goes in and in which order.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::batch;
use crate::manifest::{
    GitProvenance, Manifest, ManifestCheck, ManifestDeploy, ManifestGates, ManifestLayer,
    ManifestReverseOp, ManifestScript, OverriddenTemplate, Provenance, SkippedStep, BUNDLE_FORMAT,
};
use crate::plan::{CheckPlan, CheckSpec, InstallPlan, ReverseOp, Step, TargetKind};
use crate::preflight;
use crate::render::{Engine, RenderError, Rendered, RenderedLayer};
use crate::sign::{self, SignError, Signer};

/// Entry mtime when no `SOURCE_DATE_EPOCH` is given: 1980-01-01T00:00:00Z (a fixed, plausible time;
/// some tools warn about entries dated at the epoch itself).
pub const DEFAULT_MTIME: u64 = 315_532_800;

/// The gzip compression level; fixed so the archive bytes do not depend on a default.
const GZIP_LEVEL: u32 = 6;

/// Inputs of a build that do not come from the plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BundleOptions {
    /// `SOURCE_DATE_EPOCH`, read by the caller (the compiler reads no environment); `None` means
    /// [`DEFAULT_MTIME`].
    pub source_date_epoch: Option<u64>,
    /// The `ov` version written into the manifest, the scripts and the ledger.
    pub ov_version: String,
    /// The project's git commit and whether its work tree was dirty, found by the caller (the
    /// compiler runs no program); `None` when the project is not in a git work tree.
    pub git: Option<GitProvenance>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Path relative to the top directory, `/`-separated.
    pub path: String,
    /// Normalised mode: `0o755` for scripts and executable payload, `0o644` otherwise.
    pub mode: u32,
    /// Contents.
    pub data: Vec<u8>,
}

/// A built bundle: the archive bytes and everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The top directory (deploy name with `:` replaced by `-`), also the archive's base name.
    pub top: String,
    /// The `.tar.gz` bytes.
    pub archive: Vec<u8>,
    /// Lowercase hex sha256 of [`Bundle::archive`].
    pub sha256: String,
    /// Every file, sorted by path (including `SHA256SUMS` and `manifest.json`).
    pub files: Vec<BundleFile>,
    /// The manifest as written into `manifest.json`.
    pub manifest: Manifest,
}

impl Bundle {
    /// `<top>.tar.gz`.
    pub fn archive_name(&self) -> String {
        format!("{}.tar.gz", self.top)
    }

    /// The text of `<top>.tar.gz.sha256`: `<sha256>  <top>.tar.gz\n` (`sha256sum -c` format).
    pub fn sha256_text(&self) -> String {
        format!("{}  {}\n", self.sha256, self.archive_name())
    }
}

/// Why a bundle could not be built or written.
#[derive(Debug, Error)]
pub enum BundleError {
    /// A name that becomes a path or a ledger key has characters that are not allowed.
    #[error("{what} `{value}` cannot be used in a bundle: {reason}")]
    Name {
        /// What the value is (`deploy name`, `layer name`, …).
        what: &'static str,
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The plan has no layers.
    #[error("deploy `{deploy}` has no layers to bundle")]
    Empty { deploy: String },
    /// Rendered layers and plan layers differ (a render bug, reported rather than guessed at).
    #[error("rendered layers do not match the plan: plan has {plan}, render produced {rendered}")]
    LayerMismatch {
        /// Plan layer names.
        plan: String,
        /// Rendered layer names.
        rendered: String,
    },
    /// A rendered script name is not `MM-<scope>.sh` or appears twice.
    #[error("layer `{layer}`: bad script file name `{file}`: {reason}")]
    ScriptName {
        layer: String,
        file: String,
        /// Why.
        reason: &'static str,
    },
    /// A payload path is outside `files/<layer>/` or has a component that cannot travel.
    #[error("layer `{layer}`: payload path `{path}` {reason}")]
    PayloadPath {
        layer: String,
        /// The bundle path.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A payload file cannot be read.
    #[error("layer `{layer}`: cannot read payload file `{}`", path.display())]
    Payload {
        layer: String,
        /// The file on the compiling machine.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A payload file is larger than one bundle file may be (what `ov verify` and `ov push`
    /// would refuse); found from its size, before it is read.
    #[error(
        "layer `{layer}`: payload file `{}` is {}, more than the {} one bundle file may hold \
         (`ov verify` would refuse the bundle); fetch it on the target with a `download:` task instead",
        path.display(), crate::bundle_read::bytes(*size), crate::bundle_read::bytes(*limit)
    )]
    PayloadTooLarge {
        layer: String,
        /// The file on the compiling machine.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// [`crate::bundle_read::MAX_ENTRY_BYTES`].
        limit: u64,
    },
    /// A payload source is not a regular file (a symlink could pull in any file of this machine).
    #[error("layer `{layer}`: payload `{}` is not a regular file (symlinks and directories are refused)", path.display())]
    PayloadNotFile {
        layer: String,
        /// The file on the compiling machine.
        path: PathBuf,
    },
    /// A bundle template failed.
    #[error("cannot render the bundle runtime")]
    Render(#[source] RenderError),
    /// JSON serialisation failed.
    #[error("cannot serialise `{what}`")]
    Json {
        /// What was serialised.
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The archive encoder failed.
    #[error("cannot build the archive")]
    Archive(#[source] std::io::Error),
    /// Writing the bundle to disk failed.
    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Signing `SHA256SUMS` failed.
    #[error("cannot sign the bundle")]
    Sign(#[source] SignError),
    /// `--out-dir` would replace something that is not a bundle.
    #[error("`{}` exists and is not an unpacked bundle; refusing to replace it", path.display())]
    OutDirOccupied {
        /// The directory.
        path: PathBuf,
    },
}

/// Build the bundle of `plan` from its rendered scripts.
///
/// `rendered.layers` must name the plan's layers in the same order (one per plan layer). Scripts
/// run in file-name order; payload and overridden-template lists may come in any order.
pub fn build(
    plan: &InstallPlan,
    rendered: &Rendered,
    engine: &Engine,
    opts: &BundleOptions,
) -> Result<Bundle, BundleError> {
    build_signed(plan, rendered, engine, opts, None)
}

/// [`build`], and with a `signer` also sign `SHA256SUMS` ([`crate::sign`]): the signer is listed
/// in the manifest (which `SHA256SUMS` covers) and the signature is stored as `SHA256SUMS.sig`
/// in the top directory, the one file `SHA256SUMS` does not list.
pub fn build_signed(
    plan: &InstallPlan,
    rendered: &Rendered,
    engine: &Engine,
    opts: &BundleOptions,
    signer: Option<&dyn Signer>,
) -> Result<Bundle, BundleError> {
    let deploy = &plan.deploy;
    check_name("deploy name", &deploy.name, true)?;
    if !(deploy.id.len() == 16 && deploy.id.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(BundleError::Name {
            what: "deploy id",
            value: deploy.id.clone(),
            reason: "must be 16 hex digits",
        });
    }
    if let Some(user) = &deploy.user {
        check_name("user", user, false)?;
    }
    if plan.layers.is_empty() {
        return Err(BundleError::Empty {
            deploy: deploy.name.clone(),
        });
    }
    let plan_names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
    let rendered_names: Vec<&str> = rendered.layers.iter().map(|l| l.name.as_str()).collect();
    if plan_names != rendered_names {
        return Err(BundleError::LayerMismatch {
            plan: plan_names.join(", "),
            rendered: rendered_names.join(", "),
        });
    }
    let top = deploy.name.replace(':', "-");
    let mtime = opts.source_date_epoch.unwrap_or(DEFAULT_MTIME);
    let width = plan.layers.len().to_string().len().max(2);

    let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let mut manifest_layers = Vec::new();
    let mut run_layers = Vec::new();
    let mut run_scripts = Vec::new();
    let mut test_checks = Vec::new();
    let mut test_texts = Vec::new();
    let mut run_packages: Vec<String> = Vec::new();
    let mut payload_bytes: u64 = 0;
    for (index, (lp, rl)) in plan.layers.iter().zip(&rendered.layers).enumerate() {
        check_name("layer name", &lp.name, false)?;
        let dir = format!("layers/{:0width$}-{}", index + 1, lp.name);
        let scripts = sorted_scripts(rl)?;
        let payload = read_payload(rl)?;

        // The digest covers what runs and what it installs, not where the layer sits in this
        // deploy, so moving a layer does not make it run again.
        let mut entries: Vec<(String, u32, &[u8])> = Vec::new();
        for s in &scripts {
            entries.push((s.file_name.clone(), 0o755, s.content.as_bytes()));
        }
        entries.push(("undo.sh".to_string(), 0o755, rl.undo.as_bytes()));
        for (path, mode, data) in &payload {
            entries.push((format!("files/{path}"), *mode, data));
        }
        let digest = layer_digest(&mut entries);

        let first_script = run_scripts.len();
        let mut manifest_scripts = Vec::new();
        for s in &scripts {
            let path = format!("{dir}/{}", s.file_name);
            files.insert(path.clone(), (0o755, s.content.clone().into_bytes()));
            // Its check script (`run.sh --check`) changes nothing, so it is outside the digest.
            if !s.check.is_empty() {
                files.insert(
                    format!("{dir}/{}", check_file_name(&s.file_name)),
                    (0o755, s.check.clone().into_bytes()),
                );
            }
            run_scripts.push(RunScript {
                layer: index,
                file: s.file_name.clone(),
                scope: s.scope.as_str(),
            });
            manifest_scripts.push(ManifestScript {
                file: s.file_name.clone(),
                path,
                scope: s.scope.as_str().to_string(),
                venue: s.venue.as_str().to_string(),
                steps: s.steps.clone(),
            });
        }
        let undo = format!("{dir}/undo.sh");
        files.insert(undo.clone(), (0o755, rl.undo.clone().into_bytes()));
        let mut payload_paths = Vec::new();
        for (path, mode, data) in payload {
            payload_bytes += data.len() as u64;
            let full = format!("files/{}/{path}", lp.name);
            payload_paths.push(full.clone());
            files.insert(full, (mode, data));
        }

        let reverse_ops: Vec<ManifestReverseOp> = lp
            .steps
            .iter()
            .filter(|s| s.skip.is_none())
            .flat_map(|s| s.reverse.iter().map(reverse_op))
            .collect();
        let skipped: Vec<SkippedStep> = lp.steps.iter().filter_map(skipped_step).collect();
        let steps_json: Vec<LedgerStep> = manifest_scripts
            .iter()
            .flat_map(|s| {
                s.steps.iter().map(|summary| LedgerStep {
                    script: &s.file,
                    scope: &s.scope,
                    venue: &s.venue,
                    summary,
                })
            })
            .collect();
        let batching = batch::layer_batching(lp);
        let pkg_first = run_packages.len();
        let pkg_format = match &batching.install {
            Some((format, packages)) => {
                run_packages.extend(packages.iter().cloned());
                format.clone()
            }
            None => String::new(),
        };
        run_layers.push(RunLayer {
            pkg_format,
            pkg_first,
            pkg_count: run_packages.len() - pkg_first,
            pkg_join: batching.join.into(),
            pkg_pass: batching.pass.into(),
            name: lp.name.clone(),
            dir: dir.clone(),
            digest: digest.clone(),
            version: lp.version.clone().unwrap_or_default(),
            steps_json: to_json("ledger steps", &steps_json)?,
            reverse_json: to_json("reverse ops", &reverse_ops)?,
            first_script,
            script_count: scripts.len(),
            root_code: lp.steps.iter().any(|s| s.runs_root_code()).into(),
        });
        manifest_layers.push(ManifestLayer {
            name: lp.name.clone(),
            version: lp.version.clone(),
            source: lp.source.clone(),
            origin: Some(lp.origin().clone()),
            dir,
            digest,
            scripts: manifest_scripts,
            undo,
            payload: payload_paths,
            skipped,
            reverse_ops,
            checks: lp
                .checks
                .iter()
                .map(|c| ManifestCheck {
                    id: c.id.clone(),
                    kind: c.probe.kind().to_string(),
                    scope: c.scope.as_str().to_string(),
                    skip: c.skip.clone(),
                })
                .collect(),
        });
        for c in &lp.checks {
            test_row(&lp.name, c, &mut test_checks, &mut test_texts);
        }
    }

    let from_engine = engine.overridden_in_bundle();
    let mut overridden: Vec<OverriddenTemplate> = rendered
        .overridden_templates
        .iter()
        .chain(&from_engine)
        .map(|(name, sha256)| OverriddenTemplate {
            name: name.clone(),
            sha256: sha256.clone(),
        })
        .collect();
    overridden.sort_by(|a, b| (&a.name, &a.sha256).cmp(&(&b.name, &b.sha256)));
    overridden.dedup();

    let manifest = Manifest {
        format_version: BUNDLE_FORMAT,
        ov_version: opts.ov_version.clone(),
        deploy: ManifestDeploy {
            name: deploy.name.clone(),
            id: deploy.id.to_ascii_lowercase(),
            target: target_name(&deploy.target),
            distro: deploy.distro.tags.clone(),
            package_formats: deploy.distro.formats.clone(),
            user: deploy.user.clone(),
            requested: deploy.requested.clone(),
        },
        gates: ManifestGates {
            allow_repo_changes: plan.gates.allow_repo_changes,
            allow_root_tasks: plan.gates.allow_root_tasks,
            with_services: plan.gates.with_services,
        },
        layers: manifest_layers,
        overridden_templates: overridden,
        package_batches: batch::package_batches(plan),
        mtime,
        provenance: Some(Provenance {
            ov_version: opts.ov_version.clone(),
            source_date_epoch: opts.source_date_epoch,
            git: opts.git.clone(),
            signer: signer.map(sign::signer_info),
        }),
    };

    let ctx = RuntimeContext {
        top: top.clone(),
        deploy: manifest.deploy.name.clone(),
        deploy_id: manifest.deploy.id.clone(),
        target: manifest.deploy.target.clone(),
        user: manifest.deploy.user.clone().unwrap_or_default(),
        ov_version: opts.ov_version.clone(),
        format_version: BUNDLE_FORMAT,
        layer_count: run_layers.len(),
        layers: run_layers,
        scripts: run_scripts,
        packages: run_packages,
        distro: deploy.distro.tags.clone(),
        needs: preflight::required_commands(plan),
        payload_kib: payload_bytes.div_ceil(1024),
        lib_core: rendered.lib_core_only,
        guard_dirs: guard_dirs(plan),
        list_text: manifest.listing(),
        signer: signer
            .map(sign::signer_info)
            .map(|i| {
                if i.comment.is_empty() {
                    format!("{} ({})", i.fingerprint, i.algorithm)
                } else {
                    format!("{} ({}, {})", i.fingerprint, i.algorithm, i.comment)
                }
            })
            .unwrap_or_default(),
        sig_namespace: sign::NAMESPACE,
    };
    let render = |name: &str| engine.render(name, &ctx).map_err(BundleError::Render);
    files.insert(
        "run.sh".into(),
        (0o755, render("bundle/run.sh.j2")?.into_bytes()),
    );
    files.insert(
        "undo.sh".into(),
        (0o755, render("bundle/undo.sh.j2")?.into_bytes()),
    );
    let mut lib = render("bundle/lib.sh.j2")?;
    if !rendered.step_lib.is_empty() {
        lib.push_str("\n# ---- step helpers (templates/lib/steps.sh) ----\n");
        lib.push_str(&rendered.step_lib);
        if !lib.ends_with('\n') {
            lib.push('\n');
        }
    }
    lib.push_str(&render("bundle/lib-runtime.sh.j2")?);
    files.insert("lib.sh".into(), (0o755, lib.into_bytes()));
    // Only a bundle with checks carries test.sh; `run.sh --test` reports "none" without it.
    if !test_checks.is_empty() {
        let tctx = TestContext {
            top: top.clone(),
            deploy: manifest.deploy.name.clone(),
            ov_version: opts.ov_version.clone(),
            checks: test_checks,
            texts: test_texts,
        };
        files.insert(
            "test.sh".into(),
            (
                0o755,
                engine
                    .render("bundle/test.sh.j2", &tctx)
                    .map_err(BundleError::Render)?
                    .into_bytes(),
            ),
        );
    }
    files.insert(
        "README.txt".into(),
        (0o644, render("bundle/README.txt.j2")?.into_bytes()),
    );
    let mut manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|source| BundleError::Json {
            what: "manifest.json",
            source,
        })?;
    manifest_json.push(b'\n');
    files.insert("manifest.json".into(), (0o644, manifest_json));

    let mut sums = String::new();
    for (path, (_, data)) in &files {
        sums.push_str(&format!("{}  {path}\n", hex::encode(Sha256::digest(data))));
    }
    if let Some(signer) = signer {
        let sig = sign::sign_sums(signer, sums.as_bytes()).map_err(BundleError::Sign)?;
        files.insert(sign::SIG_FILE.into(), (0o644, sig.into_bytes()));
    }
    files.insert("SHA256SUMS".into(), (0o644, sums.into_bytes()));

    let files: Vec<BundleFile> = files
        .into_iter()
        .map(|(path, (mode, data))| BundleFile { path, mode, data })
        .collect();
    let archive = encode(&top, &files, mtime).map_err(BundleError::Archive)?;
    let sha256 = hex::encode(Sha256::digest(&archive));
    Ok(Bundle {
        top,
        archive,
        sha256,
        files,
        manifest,
    })
}

/// Write `<out>` (the archive) and `<out>.sha256` beside it, each atomically (a temporary file in
/// the same directory, then a rename), mode 0644. Returns the two paths.
pub fn write(bundle: &Bundle, out: &Path) -> Result<(PathBuf, PathBuf), BundleError> {
    let mut sha_path = out.as_os_str().to_owned();
    sha_path.push(".sha256");
    let sha_path = PathBuf::from(sha_path);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| bundle.archive_name());
    write_atomic(out, &bundle.archive)?;
    write_atomic(&sha_path, format!("{}  {name}\n", bundle.sha256).as_bytes())?;
    Ok((out.to_path_buf(), sha_path))
}

/// Write the bundle unpacked as `<dir>/<top>/…` (for `ov compile --out-dir`), replacing an earlier
/// unpacked bundle there; refuses to replace a directory that does not look like one.
pub fn write_unpacked(bundle: &Bundle, dir: &Path) -> Result<PathBuf, BundleError> {
    let wr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(wr(dir))?;
    let dest = dir.join(&bundle.top);
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.", bundle.top))
        .tempdir_in(dir)
        .map_err(wr(dir))?;
    for f in &bundle.files {
        let path = staging.path().join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(wr(parent))?;
        }
        std::fs::write(&path, &f.data).map_err(wr(&path))?;
        set_mode(&path, f.mode).map_err(wr(&path))?;
    }
    set_dir_modes(staging.path()).map_err(wr(staging.path()))?;
    if dest.exists() {
        let looks_like_bundle =
            dest.join("SHA256SUMS").is_file() && dest.join("manifest.json").is_file();
        if !looks_like_bundle {
            return Err(BundleError::OutDirOccupied { path: dest });
        }
        std::fs::remove_dir_all(&dest).map_err(wr(&dest))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &dest).map_err(wr(&dest))?;
    Ok(dest)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BundleError> {
    let err = |source| BundleError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".ov-bundle.")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(data).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    set_mode(tmp.path(), 0o644).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

fn set_dir_modes(dir: &Path) -> std::io::Result<()> {
    set_mode(dir, 0o755)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_dir_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// Names that become path components, ledger file names and progress-line values: a safe,
/// space-free character set (layer names come from directory names, which are untrusted).
fn check_name(what: &'static str, value: &str, allow_colon: bool) -> Result<(), BundleError> {
    match name_problem(value, allow_colon) {
        Some(reason) => Err(BundleError::Name {
            what,
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why `value` cannot be a name in a bundle (a path component, a ledger file name, `run.sh
/// --user`), or `None` when it can: it starts with a letter, a digit or `_`, holds only letters,
/// digits and `._+-` (and `:` where `allow_colon`), and has at most 200 characters. The project
/// reader applies it where it reads such names, so their errors can say the line.
pub fn name_problem(value: &str, allow_colon: bool) -> Option<&'static str> {
    match value.chars().next() {
        None => return Some("it is empty"),
        Some(c) if !c.is_ascii_alphanumeric() && c != '_' => {
            return Some("it must start with a letter, a digit or `_`")
        }
        _ => {}
    }
    let ok = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') || (allow_colon && c == ':')
    };
    if !value.chars().all(ok) {
        return Some(if allow_colon {
            "only letters, digits and `._+-:` are allowed"
        } else {
            "only letters, digits and `._+-` are allowed"
        });
    }
    if value.len() > 200 {
        return Some("it is longer than 200 characters");
    }
    None
}

/// The layer's scripts sorted by file name (the run order), after checking each name.
/// The check script of the layer script `MM-<scope>.sh`: `MM-<scope>.check.sh`.
fn check_file_name(script: &str) -> String {
    format!("{}.check.sh", script.strip_suffix(".sh").unwrap_or(script))
}

fn sorted_scripts(rl: &RenderedLayer) -> Result<Vec<&crate::render::RenderedScript>, BundleError> {
    let mut scripts: Vec<_> = rl.scripts.iter().collect();
    scripts.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    for pair in scripts.windows(2) {
        if pair[0].file_name == pair[1].file_name {
            return Err(BundleError::ScriptName {
                layer: rl.name.clone(),
                file: pair[0].file_name.clone(),
                reason: "it appears twice",
            });
        }
    }
    for s in &scripts {
        let bad = |reason| BundleError::ScriptName {
            layer: rl.name.clone(),
            file: s.file_name.clone(),
            reason,
        };
        let (num, rest) = s
            .file_name
            .split_once('-')
            .ok_or_else(|| bad("expected `MM-<scope>.sh`"))?;
        if num.len() < 2 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected `MM-<scope>.sh` with MM at least two digits"));
        }
        if rest != format!("{}.sh", s.scope.as_str()) {
            return Err(bad(
                "the name must end in `-<scope>.sh` for the script's scope",
            ));
        }
    }
    Ok(scripts)
}

/// Payload as (path below `files/<layer>/`, normalised mode, bytes), sorted by path.
fn read_payload(rl: &RenderedLayer) -> Result<Vec<(String, u32, Vec<u8>)>, BundleError> {
    let prefix = format!("files/{}/", rl.name);
    let mut out = Vec::new();
    for p in &rl.payload {
        let bad = |reason| BundleError::PayloadPath {
            layer: rl.name.clone(),
            path: p.bundle_path.clone(),
            reason,
        };
        let rel = p
            .bundle_path
            .strip_prefix(&prefix)
            .ok_or_else(|| bad("is not under `files/<layer>/`"))?;
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("has an empty, `.` or `..` component"));
        }
        if rel.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(bad(
                "contains a backslash or a control character (SHA256SUMS could not list it)",
            ));
        }
        let meta =
            std::fs::symlink_metadata(&p.source_path).map_err(|source| BundleError::Payload {
                layer: rl.name.clone(),
                path: p.source_path.clone(),
                source,
            })?;
        if !meta.file_type().is_file() {
            return Err(BundleError::PayloadNotFile {
                layer: rl.name.clone(),
                path: p.source_path.clone(),
            });
        }
        // Refused by its size before it is read (a file of many GiB would be read whole into
        // memory), and read at most one byte past the limit, should it grow meanwhile.
        let limit = crate::bundle_read::MAX_ENTRY_BYTES;
        let too_large = |size: u64| BundleError::PayloadTooLarge {
            layer: rl.name.clone(),
            path: p.source_path.clone(),
            size,
            limit,
        };
        if meta.len() > limit {
            return Err(too_large(meta.len()));
        }
        let mut data = Vec::new();
        std::fs::File::open(&p.source_path)
            .and_then(|f| {
                std::io::Read::read_to_end(&mut std::io::Read::take(f, limit + 1), &mut data)
            })
            .map_err(|source| BundleError::Payload {
                layer: rl.name.clone(),
                path: p.source_path.clone(),
                source,
            })?;
        if data.len() as u64 > limit {
            return Err(too_large(data.len() as u64));
        }
        out.push((rel.to_string(), payload_mode(&meta), data));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in out.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(BundleError::PayloadPath {
                layer: rl.name.clone(),
                path: format!("{prefix}{}", pair[0].0),
                reason: "appears twice",
            });
        }
    }
    Ok(out)
}

#[cfg(unix)]
fn payload_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(not(unix))]
fn payload_mode(_meta: &std::fs::Metadata) -> u32 {
    0o644
}

/// sha256 over `name NUL mode NUL length NUL bytes` for every entry, sorted by name.
fn layer_digest(entries: &mut [(String, u32, &[u8])]) -> String {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, mode, data) in entries.iter() {
        h.update(name.as_bytes());
        h.update(format!("\0{mode:o}\0{}\0", data.len()).as_bytes());
        h.update(data);
    }
    hex::encode(h.finalize())
}

/// The tar.gz bytes: directories and files sorted by path components (a parent before its
/// children), every header with the same mtime, uid/gid 0 and no user or group names.
fn encode(top: &str, files: &[BundleFile], mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut dirs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for f in files {
        let mut cur = String::new();
        for part in f
            .path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            dirs.insert(cur.clone());
        }
    }
    // (components, is_dir, index into files)
    let mut order: Vec<(Vec<&str>, Option<usize>)> = Vec::new();
    order.push((Vec::new(), None));
    for d in &dirs {
        order.push((d.split('/').collect(), None));
    }
    for (i, f) in files.iter().enumerate() {
        order.push((f.path.split('/').collect(), Some(i)));
    }
    order.sort();

    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for (parts, file) in order {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        match file {
            None => {
                let path = if parts.is_empty() {
                    format!("{top}/")
                } else {
                    format!("{top}/{}/", parts.join("/"))
                };
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, path, std::io::empty())?;
            }
            Some(i) => {
                let f = &files[i];
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(f.mode);
                header.set_size(f.data.len() as u64);
                tar.append_data(&mut header, format!("{top}/{}", f.path), f.data.as_slice())?;
            }
        }
    }
    crate::gzip::gzip(&tar.into_inner()?, GZIP_LEVEL)
}

fn target_name(t: &TargetKind) -> String {
    match t {
        TargetKind::Vm { vm } => format!("vm:{vm}"),
        TargetKind::Host => "host".to_string(),
    }
}

fn kebab<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn reverse_op(op: &ReverseOp) -> ManifestReverseOp {
    ManifestReverseOp {
        kind: kebab(&op.kind),
        format: op.format.clone(),
        targets: op.targets.clone(),
        scope: op.scope.as_str().to_string(),
        extra: op.extra.clone(),
    }
}

fn skipped_step(step: &Step) -> Option<SkippedStep> {
    let skip = step.skip.as_ref()?;
    Some(SkippedStep {
        kind: step.kind().to_string(),
        scope: step.scope.as_str().to_string(),
        what: step.action.summary(),
        reason: skip.reason.clone(),
        enable_with: skip.enable_with.map(|g| g.as_str().to_string()),
    })
}

/// One ledger step record (`steps` of `layers/<layer>.json`).
#[derive(Serialize)]
struct LedgerStep<'a> {
    script: &'a str,
    scope: &'a str,
    venue: &'a str,
    summary: &'a str,
}

fn to_json<T: Serialize>(what: &'static str, v: &T) -> Result<String, BundleError> {
    serde_json::to_string(v).map_err(|source| BundleError::Json { what, source })
}

#[derive(Serialize)]
struct RunLayer {
    name: String,
    dir: String,
    digest: String,
    version: String,
    steps_json: String,
    reverse_json: String,
    /// Index of the layer's first entry in `scripts`: a layer's scripts are consecutive there,
    /// so run.sh finds them without walking every script (linear in the number of layers).
    first_script: usize,
    script_count: usize,
    /// The batching facts (`crate::batch`): the format of the layer's batchable install (empty
    /// when it has none), its package names as `packages[pkg_first..pkg_first + pkg_count]`,
    /// whether the install may join an earlier layer's transaction and whether a transaction
    /// may go on past the layer.
    pkg_format: String,
    pkg_first: usize,
    pkg_count: usize,
    pkg_join: u8,
    pkg_pass: u8,
    /// 1 when a system step of the layer runs root's own code ([`crate::plan::Step::runs_root_code`]).
    root_code: u8,
}

/// One check as `test.sh`'s arrays hold it (see the template for what each column means).
#[derive(Serialize)]
struct TestRow {
    layer: String,
    id: String,
    kind: String,
    scope: &'static str,
    timeout: u32,
    skip: String,
    arg: String,
    /// `arg` is a path with run-time variables (`${HOME}`, `~/`), resolved on the target.
    runtime_path: bool,
    arg2: String,
    want: String,
    want2: String,
}

/// One text test of a check.
#[derive(Serialize)]
struct TestText {
    check: usize,
    stream: &'static str,
    op: &'static str,
    value: String,
}

#[derive(Serialize)]
struct TestContext {
    top: String,
    deploy: String,
    ov_version: String,
    checks: Vec<TestRow>,
    texts: Vec<TestText>,
}

/// Flatten one check into `test.sh`'s columns.
fn test_row(layer: &str, c: &CheckPlan, rows: &mut Vec<TestRow>, texts: &mut Vec<TestText>) {
    let index = rows.len();
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let opt_flag = |b: Option<bool>| b.map(flag).unwrap_or_default();
    let mut add = |stream: &'static str, tests: &[crate::plan::TextTest]| {
        for t in tests {
            texts.push(TestText {
                check: index,
                stream,
                op: t.op.as_str(),
                value: t.value.clone(),
            });
        }
    };
    let (arg, runtime_path, arg2, want, want2) = match &c.probe {
        CheckSpec::File {
            path,
            exists,
            mode,
            filetype,
            contains,
        } => {
            add("content", contains);
            (
                path.clone(),
                true,
                filetype.clone().unwrap_or_default(),
                flag(*exists),
                mode.clone().unwrap_or_default(),
            )
        }
        CheckSpec::Command {
            command,
            exit_status,
            stdout,
            stderr,
        } => {
            add("stdout", stdout);
            add("stderr", stderr);
            (
                command.clone(),
                false,
                String::new(),
                exit_status.to_string(),
                String::new(),
            )
        }
        CheckSpec::Package {
            format,
            name,
            installed,
        } => (
            name.clone(),
            false,
            format.clone(),
            flag(*installed),
            String::new(),
        ),
        CheckSpec::Service {
            unit,
            user,
            running,
            enabled,
        } => (
            unit.clone(),
            false,
            if *user { "user" } else { "system" }.to_string(),
            opt_flag(*running),
            opt_flag(*enabled),
        ),
        CheckSpec::Addr {
            host,
            port,
            reachable,
        } => (
            host.clone(),
            false,
            port.to_string(),
            flag(*reachable),
            String::new(),
        ),
        CheckSpec::Http {
            url,
            method,
            status,
            body,
            insecure,
        } => {
            add("body", body);
            (
                url.clone(),
                false,
                method.clone(),
                status.to_string(),
                flag(*insecure),
            )
        }
        CheckSpec::Unsupported { .. } => Default::default(),
    };
    rows.push(TestRow {
        layer: layer.to_string(),
        id: c.id.clone(),
        kind: c.probe.kind().to_string(),
        scope: c.scope.as_str(),
        timeout: c.timeout_secs,
        skip: c.skip.clone().unwrap_or_default(),
        arg,
        runtime_path,
        arg2,
        want,
        want2,
    });
}

#[derive(Serialize)]
struct RunScript {
    layer: usize,
    file: String,
    scope: &'static str,
}

/// The directories root's steps write into, each with every directory above it, sorted: run.sh
/// asks their owner and mode with one `stat` before the first step, so that the guard of
/// every root write (`ov_root_guard`, which refuses a directory another account can change)
/// needs no process of its own. Literal absolute paths of system-scope steps that run: task
/// destinations, payload files, repository files and whatever their undo removes. A directory
/// missing here costs the guard one `stat`, never a check.
fn guard_dirs(plan: &InstallPlan) -> Vec<String> {
    use crate::entries::TaskVerb;
    use crate::plan::{Action, Scope};
    let mut dirs = std::collections::BTreeSet::new();
    let mut add = |path: &str, is_dir: bool| {
        if !path.starts_with('/') || path.contains('$') || path.contains("/../") {
            return;
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let keep = if is_dir {
            parts.len()
        } else {
            parts.len().saturating_sub(1)
        };
        let mut d = String::new();
        dirs.insert("/".to_string());
        for part in &parts[..keep] {
            d.push('/');
            d.push_str(part);
            dirs.insert(d.clone());
        }
    };
    for step in plan.layers.iter().flat_map(|l| &l.steps) {
        if step.scope != Scope::System || step.skip.is_some() {
            continue;
        }
        match &step.action {
            Action::Task { task, .. } => match &task.verb {
                TaskVerb::Mkdir { path } => add(path, true),
                TaskVerb::Write { path, .. } | TaskVerb::Link { path, .. } => add(path, false),
                TaskVerb::Download { to: Some(to), .. } => add(to, true),
                _ => {}
            },
            Action::File { dest, .. } => add(dest, false),
            Action::RepoChange { path, .. } => add(path, false),
            _ => {}
        }
        for op in step.reverse.iter().filter(|op| op.scope == Scope::System) {
            for target in &op.targets {
                add(target, false);
            }
        }
    }
    dirs.into_iter().collect()
}

#[derive(Serialize)]
struct RuntimeContext {
    top: String,
    deploy: String,
    deploy_id: String,
    target: String,
    user: String,
    ov_version: String,
    format_version: u32,
    layer_count: usize,
    layers: Vec<RunLayer>,
    scripts: Vec<RunScript>,
    /// Every batchable install's package names, layer after layer (`RunLayer::pkg_first`).
    packages: Vec<String>,
    /// The distro tags the bundle was compiled for, most specific first (preflight).
    distro: Vec<String>,
    /// The commands run.sh must find before any step runs ([`crate::preflight`]).
    needs: Vec<String>,
    /// The size of the layers' payload, in KiB, rounded up (preflight: free space).
    payload_kib: u64,
    /// [`Rendered::lib_core_only`]: run.sh reads only the core step helpers of `lib.sh`.
    lib_core: bool,
    /// [`guard_dirs`]: what run.sh's `stat` before the first step looks at for the writes of root's steps.
    guard_dirs: Vec<String>,
    list_text: String,
    /// The signer as README.txt names it (`SHA256:… (comment)`), empty when unsigned.
    signer: String,
    /// [`sign::NAMESPACE`].
    sig_namespace: &'static str,
}
