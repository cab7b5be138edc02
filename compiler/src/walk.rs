//! Stages `lower` and `render` (shared): the files below a directory on the compiling machine —
//! a layer directory, a `--templates` directory — in a stable order (sorted by relative name), so
//! output never depends on the order the file system lists entries in.

use std::path::{Path, PathBuf};

/// Every non-directory entry below `dir` as (relative name with `/`, path), sorted by name.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((name, path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}
