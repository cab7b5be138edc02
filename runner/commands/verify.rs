//! Stage `runner`, `ov verify`: check a bundle — the archive against the `.sha256` beside it,
//! then every file against `SHA256SUMS`, then (with `--allowed-signers FILE`) `SHA256SUMS.sig`
//! against the signers FILE lists, with the system `ssh-keygen` as run.sh on the target does.
//! Invariant: exit 4 (integrity) on any mismatch, 3 when the files cannot be read or the archive
//! is beyond the `bundle_read` limits (a gzip bomb is refused before it is expanded).

use std::path::PathBuf;

use ov_compiler::bundle_read::Limits;

use crate::commands::project::{bundle_error, open_archive};
use crate::commands::CommandError;

/// Plain options of `ov verify`.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The bundle archive (its `.sha256` beside it), or an unpacked bundle's directory.
    pub bundle: PathBuf,
    /// `--allowed-signers FILE`: also require a good signature by a key FILE lists.
    pub allowed_signers: Option<PathBuf>,
}

/// With `--allowed-signers`, the signature of the verified `SHA256SUMS`: the line to print.
fn check_signature(
    opts: &VerifyOptions,
    report: &ov_compiler::manifest::VerifyReport,
) -> Result<Option<String>, CommandError> {
    let Some(file) = &opts.allowed_signers else {
        return Ok(None);
    };
    let (principal, fingerprint) =
        crate::sign::verify_signature(&report.sums, report.signature.as_deref(), file).map_err(
            |source| CommandError::Signature {
                path: opts.bundle.clone(),
                source,
            },
        )?;
    Ok(Some(format!(
        "ok: SHA256SUMS is signed by {principal} (key {fingerprint}), as `{}` allows",
        file.display()
    )))
}

/// `ov verify`.
pub fn run(opts: &VerifyOptions) -> Result<(), CommandError> {
    let path = &opts.bundle;
    if path.is_dir() {
        // Unpacked (`ov compile --out-dir`, or extracted by hand): no archive, so no archive
        // digest; every file against SHA256SUMS all the same.
        let report = ov_compiler::bundle_dir::verify_dir(path, &Limits::default())
            .map_err(|e| bundle_error("verify", path, e))?;
        println!(
            "ok: {} (unpacked bundle {}): {} files match SHA256SUMS (no archive, so no archive digest to check)",
            path.display(),
            report.top,
            report.files_checked
        );
        if let Some(line) = check_signature(opts, &report)? {
            crate::ui::term::say(&line);
        }
        return Ok(());
    }
    let archive = open_archive(path, "verify")?;
    let mut sum_path = path.as_os_str().to_owned();
    sum_path.push(".sha256");
    let sum_path = PathBuf::from(sum_path);
    let sum =
        std::fs::read_to_string(&sum_path).map_err(|reason| CommandError::NoChecksumFile {
            path: sum_path.clone(),
            reason,
        })?;
    let report = ov_compiler::manifest::verify_archive(archive, &sum)
        .map_err(|e| bundle_error("verify", path, e))?;
    println!(
        "ok: {} matches {}; {} files match SHA256SUMS",
        path.display(),
        sum_path.display(),
        report.files_checked
    );
    if let Some(line) = check_signature(opts, &report)? {
        crate::ui::term::say(&line);
    }
    Ok(())
}
