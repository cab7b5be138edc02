//! Stage `runner`, `ov compile`: compile a deploy into `<name>.tar.gz` and its `.sha256` (or an
//! unpacked directory, or a hand-off to Ansible or cloud-init) and say where, with the digest.
//! Invariant: output files are written atomically (by the compiler's `bundle`, or here through a
//! temporary file renamed into place).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ov_compiler::bundle;
use ov_compiler::emit;
use ov_compiler::render::Engine;

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
    /// `--emit ansible DIR`: a playbook and a role in DIR.
    Ansible(PathBuf),
    /// `--emit cloud-init FILE`: user-data of at most `max` bytes.
    CloudInit {
        /// Where to write it.
        file: PathBuf,
        /// `--max-user-data`.
        max: u64,
        /// `--bundle-url`: the user-data downloads the archive from here (written beside FILE).
        url: Option<String>,
    },
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
        Output::Ansible(dir) => return write_ansible(&bundle, &opts.build, dir),
        Output::CloudInit { file, max, url } => {
            return write_cloud_init(&bundle, &opts.build, file, *max, url.as_deref())
        }
        // A directory (one that exists, or a path ending in `/`) gets the archive under its own
        // name, as `cp` and `mv` do with a directory.
        Output::Archive(dir) if dir.is_dir() || dir.as_os_str().as_bytes().ends_with(b"/") => {
            dir.join(bundle.archive_name())
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

/// `--emit ansible DIR`: the playbook, the role (with the archive) and the README.
fn write_ansible(
    bundle: &bundle::Bundle,
    build: &crate::commands::project::BuildOptions,
    dir: &Path,
) -> Result<(), CommandError> {
    let engine = Engine::new(build.templates.as_deref())?;
    let files = emit::ansible(bundle, &engine)?;
    for f in &files {
        write_atomic(&dir.join(&f.path), &f.data)?;
    }
    println!("wrote {} ({} files)", dir.display(), files.len());
    println!(
        "run it: cd {} && ansible-playbook -i INVENTORY playbook.yml",
        dir.display()
    );
    println!("sha256 {}", bundle.sha256);
    Ok(())
}

/// `--emit cloud-init FILE`: the user-data, and its size against the common limits; with
/// `--bundle-url`, the archive and its `.sha256` beside FILE (what is to be served at the URL).
fn write_cloud_init(
    bundle: &bundle::Bundle,
    build: &crate::commands::project::BuildOptions,
    file: &Path,
    max: u64,
    url: Option<&str>,
) -> Result<(), CommandError> {
    let engine = Engine::new(build.templates.as_deref())?;
    let ud = match url {
        Some(url) => emit::cloud_init_fetching(bundle, &engine, max, url)?,
        None => emit::cloud_init(bundle, &engine, max)?,
    };
    if let Some(url) = url {
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let (archive, sum) =
            bundle::write(bundle, &dir.join(bundle.archive_name())).map_err(CommandError::Write)?;
        println!("wrote {} (serve it at {url})", archive.display());
        println!("wrote {}", sum.display());
    }
    write_atomic(file, &ud.data)?;
    println!(
        "wrote {}: {} bytes of user-data ({}; plain {} bytes, gzip-compressed {} bytes), limit {} bytes",
        file.display(),
        ud.data.len(),
        if ud.is_gzip {
            "gzip-compressed, as only that fits"
        } else {
            "plain #cloud-config"
        },
        ud.plain,
        ud.gzipped,
        max
    );
    let size = ud.data.len() as u64;
    let limits: Vec<String> = emit::USER_DATA_LIMITS
        .iter()
        .map(|l| {
            format!(
                "{} {} ({}): {}",
                l.name,
                l.bytes,
                l.rule,
                if size <= l.bytes { "fits" } else { "too large" }
            )
        })
        .collect();
    println!("user-data limits: {}", limits.join("; "));
    println!("sha256 {}", bundle.sha256);
    Ok(())
}

/// Write `data` to `path` through a temporary file beside it, renamed into place; creates the
/// directories on the way.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CommandError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    std::io::Write::write_all(&mut tmp, data)?;
    // Plain files for people and engines to read, like the archive (a temporary file is 0600).
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| CommandError::Io(e.error))?;
    Ok(())
}
