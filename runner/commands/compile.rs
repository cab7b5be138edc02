//! Stage `runner`, `ov compile`: compile a deploy into `<name>.tar.gz` and its `.sha256` (or an
//! unpacked directory) and say where, with the digest.
//! Invariant: output files are written atomically by the compiler's `bundle`.

use std::path::PathBuf;

use ov_compiler::bundle;

use crate::commands::project::{resolve, BuildOptions, Selection};
use crate::commands::CommandError;
use crate::ui::progress::Verbosity;

/// Where `ov compile` writes.
#[derive(Debug, Clone)]
pub enum Output {
    /// `./<name>.tar.gz`.
    Default,
    /// `-o FILE`.
    Archive(PathBuf),
    /// `--out-dir DIR`: unpacked into `DIR/<name>/`.
    Unpacked(PathBuf),
}

/// Plain options of `ov compile`.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// The project, the deploy and its layers.
    pub selection: Selection,
    /// Templates and timestamps.
    pub build: BuildOptions,
    /// Where to write.
    pub output: Output,
    /// `-q`: no note about steps left out by closed gates.
    pub verbosity: Verbosity,
}

/// `ov compile`: write the archive (and `.sha256`) or the unpacked tree; print where and the digest.
pub fn run(opts: &CompileOptions) -> Result<(), CommandError> {
    let bundle = resolve(&opts.selection)?.compile(&opts.build)?;
    // Steps a closed gate leaves out are easy to miss: say so, with the flag, once.
    if opts.verbosity > Verbosity::Quiet {
        if let Some(msg) = crate::bundle::gated_off_summary(&bundle.manifest) {
            eprintln!("note: {msg}");
        }
    }
    let out = match &opts.output {
        Output::Unpacked(dir) => {
            let top = bundle::write_unpacked(&bundle, dir).map_err(CommandError::Write)?;
            println!("wrote {} ({} files)", top.display(), bundle.files.len());
            return Ok(());
        }
        Output::Archive(file) => file.clone(),
        Output::Default => PathBuf::from(bundle.archive_name()),
    };
    // Like `--out-dir`, `-o` creates the directory it writes into.
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let (archive, sum) = bundle::write(&bundle, &out).map_err(CommandError::Write)?;
    println!("wrote {}", archive.display());
    println!("wrote {}", sum.display());
    println!(
        "sha256 {}",
        bundle.sha256_text().split_whitespace().next().unwrap_or("")
    );
    Ok(())
}
