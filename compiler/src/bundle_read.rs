//! Stage `bundle` (reading back): streams an untrusted bundle archive (`.tar.gz`) entry by entry
//! for `ov verify`, `ov inspect` and `ov push`, hashing as it goes.
//! Invariant: memory stays bounded whatever the archive holds — only the files the caller asks
//! for are kept (each at most [`Limits::kept`] bytes), plus one short index record per entry —
//! and every entry is checked against the [`Limits`] from its header, before a byte of its data
//! is read, so a gzip bomb is refused without being expanded.
//!
//! The tar stream is read in raw mode: GNU long-name and pax headers are read here, each capped,
//! instead of by the `tar` crate, which would read them whole into memory whatever their size.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// The most one file of a bundle may hold, expanded: 1 GiB. Bundles carry scripts and layer
/// payload; `ov compile` builds them in memory, so real ones are far below this.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;
/// The most a whole bundle may expand to (the sum of its entries' sizes): 4 GiB.
pub const MAX_EXPANDED_BYTES: u64 = 4 << 30;
/// The most `ov` reads of one file into memory (`manifest.json`, `SHA256SUMS`, the file
/// `ov inspect --script` prints): 16 MiB.
pub const MAX_KEPT_BYTES: u64 = 16 << 20;
/// The most entries a bundle may have.
pub const MAX_ENTRIES: u64 = 100_000;
/// The most bytes all entry names together may take (the index kept while reading): 8 MiB.
pub const MAX_NAME_BYTES: u64 = 8 << 20;
/// The longest single entry name (a GNU long-name or pax `path` record): 4 KiB.
pub const MAX_PATH_BYTES: u64 = 4 << 10;
/// The largest pax extended header: 64 KiB.
pub const MAX_PAX_BYTES: u64 = 64 << 10;

/// sha256 of zero bytes: a file `SHA256SUMS` lists with it must be empty.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How much an archive may hold before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one entry ([`MAX_ENTRY_BYTES`]).
    pub entry: u64,
    /// Bytes of all entries together ([`MAX_EXPANDED_BYTES`]).
    pub expanded: u64,
    /// Bytes of one file kept in memory ([`MAX_KEPT_BYTES`]).
    pub kept: u64,
    /// Number of entries ([`MAX_ENTRIES`]).
    pub entries: u64,
    /// Bytes of all entry names together ([`MAX_NAME_BYTES`]).
    pub names: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entry: MAX_ENTRY_BYTES,
            expanded: MAX_EXPANDED_BYTES,
            kept: MAX_KEPT_BYTES,
            entries: MAX_ENTRIES,
            names: MAX_NAME_BYTES,
        }
    }
}

/// A byte count for messages: `512 bytes`, `3221225472 bytes (3.0 GiB)`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{n} bytes ({v:.1} {})", UNITS[unit])
}

/// Why an archive could not be read.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// The gzip or tar stream is broken.
    #[error("cannot read the archive")]
    Read(#[source] std::io::Error),
    /// An entry that must never be in a bundle (absolute path, `..`, link, device, …).
    #[error("unsafe archive entry `{path}`: {reason}")]
    Unsafe {
        /// The entry's path as stored.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Entries under more than one top directory, or none.
    #[error("the archive must hold exactly one top directory (found: {found})")]
    TopDirectory {
        /// The top-level names found.
        found: String,
    },
    /// The same path twice.
    #[error("duplicate archive entry `{path}`")]
    Duplicate { path: String },
    /// One entry larger than [`Limits::entry`].
    #[error("archive entry `{path}` expands to {}, more than the {} one bundle file may hold; refused before reading it", bytes(*size), bytes(*limit))]
    EntryTooLarge {
        /// The entry.
        path: String,
        /// Its size from its header.
        size: u64,
        limit: u64,
    },
    /// The entries together larger than [`Limits::expanded`].
    #[error("archive entry `{path}` would bring the expanded size to {}, more than the {} a bundle may expand to; refused before reading it", bytes(*total), bytes(*limit))]
    ExpandedTooLarge {
        /// The entry that crossed the limit.
        path: String,
        /// The expanded size with it.
        total: u64,
        limit: u64,
    },
    /// A file to be read into memory larger than [`Limits::kept`].
    #[error("`{path}` is {}; `ov` reads at most {} of one file into memory", bytes(*size), bytes(*limit))]
    KeptTooLarge {
        /// The file.
        path: String,
        /// Its size from its header.
        size: u64,
        limit: u64,
    },
    /// More entries than [`Limits::entries`].
    #[error("the archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    /// Entry names longer, together, than [`Limits::names`], or one name longer than
    /// [`MAX_PATH_BYTES`].
    #[error("archive entry names are too long at `{path}`: {}, more than {}", bytes(*size), bytes(*limit))]
    NamesTooLong {
        /// The entry (cut to 200 characters).
        path: String,
        /// The size found.
        size: u64,
        limit: u64,
    },
    /// A GNU long-name or pax header larger than its cap.
    #[error("archive entry `{path}`: its {what} header is {}, more than {}", bytes(*size), bytes(*limit))]
    HeaderTooLarge {
        /// The header's own path.
        path: String,
        /// `GNU long-name`, `pax`.
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// An entry larger than `SHA256SUMS` (read earlier in the archive) allows: absent from it,
    /// or listed with the digest of an empty file.
    #[error("archive entry `{path}` holds {} but `SHA256SUMS` {}; refused before reading it", bytes(*size), if *listed { "lists it as empty" } else { "does not list it, so a bundle holds no such file" })]
    BeyondSums {
        /// The path relative to the top directory.
        path: String,
        /// Its size from its header.
        size: u64,
        /// Whether `SHA256SUMS` lists it (as empty).
        listed: bool,
    },
    /// The stream ended inside an entry.
    #[error("the archive ends inside `{path}` ({read} of {size} bytes)")]
    Truncated {
        /// The entry.
        path: String,
        /// Bytes there were.
        read: u64,
        /// Bytes its header promised.
        size: u64,
    },
}

impl ArchiveError {
    /// Whether the archive disagrees with its own `SHA256SUMS` (an integrity failure), rather
    /// than being malformed or too large.
    pub fn is_integrity(&self) -> bool {
        matches!(self, ArchiveError::BeyondSums { .. })
    }

    /// Whether a size or count limit refused the archive.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            ArchiveError::EntryTooLarge { .. }
                | ArchiveError::ExpandedTooLarge { .. }
                | ArchiveError::KeptTooLarge { .. }
                | ArchiveError::TooManyEntries { .. }
                | ArchiveError::NamesTooLong { .. }
                | ArchiveError::HeaderTooLarge { .. }
        )
    }
}

/// What to do while reading.
pub struct ScanOptions<'a> {
    pub limits: Limits,
    /// sha256 every regular file.
    pub hash: bool,
    /// Once `SHA256SUMS` has been read (it is kept if `keep` asks for it), refuse at its header
    /// any later file it does not list, or lists as empty, that holds bytes.
    pub bound_by_sums: bool,
    /// Which files to keep in memory: called with the top directory and the path below it.
    pub keep: &'a dyn Fn(&str, &str) -> bool,
}

/// One regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    /// Path relative to the top directory.
    pub path: String,
    /// Mode bits from its header.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of its bytes, when [`ScanOptions::hash`].
    pub sha256: Option<[u8; 32]>,
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The top directory, e.g. `vm-arch`.
    pub top: String,
    /// Every regular file, in archive order.
    pub files: Vec<ScannedFile>,
    /// The files [`ScanOptions::keep`] asked for, by path below the top directory.
    pub kept: BTreeMap<String, Vec<u8>>,
    /// Sum of the entries' sizes.
    pub expanded: u64,
}

impl Scan {
    /// A kept file.
    pub fn kept(&self, path: &str) -> Option<&[u8]> {
        self.kept.get(path).map(Vec::as_slice)
    }
}

/// Stream a bundle archive (`.tar.gz`), refusing anything but one top directory holding plain
/// directories and regular files, and anything beyond `opts.limits`.
pub fn scan(archive: impl Read, opts: &ScanOptions<'_>) -> Result<Scan, ArchiveError> {
    let limits = &opts.limits;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar.entries().map_err(ArchiveError::Read)?.raw(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut top: Option<String> = None;
    let mut files = Vec::new();
    let mut kept = BTreeMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut sums: Option<BTreeMap<String, String>> = None;
    let (mut count, mut expanded, mut names) = (0u64, 0u64, 0u64);
    // A GNU long name (`L`) or pax `path` applies to the next real entry.
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax_size: Option<u64> = None;
    for entry in entries {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        count += 1;
        if count > limits.entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.entries,
            });
        }
        let size = entry.size();
        let kind = entry.header().entry_type();
        let header_path = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        expanded = expanded.saturating_add(size);
        if expanded > limits.expanded {
            let path = long_name
                .as_deref()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or(header_path);
            return Err(ArchiveError::ExpandedTooLarge {
                path,
                total: expanded,
                limit: limits.expanded,
            });
        }
        let extension = if kind.is_gnu_longname() {
            Some(("GNU long-name", MAX_PATH_BYTES))
        } else if kind.is_gnu_longlink() {
            Some(("GNU long-link", MAX_PATH_BYTES))
        } else if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            Some(("pax", MAX_PAX_BYTES))
        } else {
            None
        };
        if let Some((what, limit)) = extension {
            if size > limit {
                return Err(ArchiveError::HeaderTooLarge {
                    path: header_path,
                    what,
                    size,
                    limit,
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(size)
                .read_to_end(&mut data)
                .map_err(ArchiveError::Read)?;
            if kind.is_gnu_longname() {
                while data.last() == Some(&0) {
                    data.pop();
                }
                long_name = Some(data);
            } else if kind.is_pax_local_extensions() {
                for ext in tar::PaxExtensions::new(&data).flatten() {
                    match ext.key() {
                        Ok("path") => long_name = Some(ext.value_bytes().to_vec()),
                        Ok("size") => {
                            pax_size = Some(ext.value().ok().and_then(|v| v.parse().ok()).ok_or(
                                ArchiveError::Unsafe {
                                    path: header_path.clone(),
                                    reason: "pax `size` record is not a number",
                                },
                            )?)
                        }
                        _ => {}
                    }
                }
            }
            // A long link name (`K`) and global pax records are read and dropped: links are
            // refused when their entry comes, and no global record changes how a bundle reads.
            continue;
        }

        let raw = long_name
            .take()
            .unwrap_or_else(|| header_path.clone().into_bytes());
        let path = String::from_utf8_lossy(&raw).into_owned();
        let unsafe_entry = |reason| ArchiveError::Unsafe {
            path: path.clone(),
            reason,
        };
        if raw.len() as u64 > MAX_PATH_BYTES {
            return Err(ArchiveError::NamesTooLong {
                path: path.chars().take(200).collect(),
                size: raw.len() as u64,
                limit: MAX_PATH_BYTES,
            });
        }
        names += raw.len() as u64;
        if names > limits.names {
            return Err(ArchiveError::NamesTooLong {
                path: path.chars().take(200).collect(),
                size: names,
                limit: limits.names,
            });
        }
        // The `tar` crate reads `size` bytes of data whatever a pax record says; GNU tar would
        // read the pax size. An archive the two read differently is refused.
        if pax_size.take().is_some_and(|p| p != size) {
            return Err(unsafe_entry(
                "its pax `size` record disagrees with its header",
            ));
        }
        if path.starts_with('/') {
            return Err(unsafe_entry("absolute path"));
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == ".." || *p == ".") {
            return Err(unsafe_entry("`.` or `..` component"));
        }
        let Some(first) = parts.first() else {
            return Err(unsafe_entry("empty path"));
        };
        match &top {
            None => top = Some((*first).to_string()),
            Some(t) if t != first => {
                return Err(ArchiveError::TopDirectory {
                    found: format!("{t}, {first}"),
                })
            }
            Some(_) => {}
        }
        let top_dir = top.as_deref().unwrap_or_default();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(unsafe_entry("not a regular file or directory"));
        }
        if parts.len() < 2 {
            return Err(unsafe_entry("file outside the top directory"));
        }
        if size > limits.entry {
            return Err(ArchiveError::EntryTooLarge {
                path,
                size,
                limit: limits.entry,
            });
        }
        let rel = parts[1..].join("/");
        if seen.contains(&rel) {
            return Err(ArchiveError::Duplicate { path });
        }
        if let Some(sums) = &sums {
            let listed = sums.get(&rel);
            let allowed_empty = match listed {
                None => true,
                Some(h) => h == EMPTY_SHA256,
            };
            // The signature of `SHA256SUMS` cannot be listed in it; it is bounded by its own size.
            let signature = rel == crate::sign::SIG_FILE && size <= crate::sign::SIG_MAX_BYTES;
            if allowed_empty && size > 0 && !signature {
                return Err(ArchiveError::BeyondSums {
                    path: rel,
                    size,
                    listed: listed.is_some(),
                });
            }
        }
        let keep = (opts.keep)(top_dir, &rel);
        if keep && size > limits.kept {
            return Err(ArchiveError::KeptTooLarge {
                path: rel,
                size,
                limit: limits.kept,
            });
        }
        let mode = entry.header().mode().map_err(ArchiveError::Read)?;
        let mut hasher = opts.hash.then(Sha256::new);
        let mut data = keep.then(|| Vec::with_capacity(size as usize));
        let mut read = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(ArchiveError::Read)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            if let Some(d) = data.as_mut() {
                d.extend_from_slice(&buf[..n]);
            }
        }
        if read != size {
            return Err(ArchiveError::Truncated { path, read, size });
        }
        if opts.bound_by_sums && rel == "SHA256SUMS" {
            if let Some(d) = &data {
                sums = Some(sums_lenient(d));
            }
        }
        if let Some(d) = data {
            kept.insert(rel.clone(), d);
        }
        seen.insert(rel.clone());
        files.push(ScannedFile {
            path: rel,
            mode,
            size,
            sha256: hasher.map(|h| h.finalize().into()),
        });
    }
    let top = top.ok_or_else(|| ArchiveError::TopDirectory {
        found: "nothing".into(),
    })?;
    Ok(Scan {
        top,
        files,
        kept,
        expanded,
    })
}

/// The well-formed lines of `SHA256SUMS` (path → lowercase digest). Only used to bound the
/// entries that follow it; the strict parse that reports bad lines is `manifest::parse_sums`.
fn sums_lenient(text: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| {
            let (h, p) = l.split_once("  ")?;
            (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) && !p.is_empty())
                .then(|| (p.to_string(), h.to_ascii_lowercase()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            if name.len() < 100 {
                // The name as given, `..` and `/` included (`Builder` would refuse them).
                h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, *body).expect("append");
            } else {
                b.append_data(&mut h, name, *body).expect("append");
            }
        }
        b.into_inner().expect("tar").finish().expect("gz")
    }

    fn keep_manifest(_: &str, rel: &str) -> bool {
        rel == "manifest.json" || rel == "SHA256SUMS"
    }

    fn opts(limits: Limits) -> ScanOptions<'static> {
        ScanOptions {
            limits,
            hash: true,
            bound_by_sums: true,
            keep: &keep_manifest,
        }
    }

    #[test]
    fn keeps_only_what_is_asked_and_hashes_the_rest() {
        let a = archive(&[
            ("t/manifest.json", b"{}"),
            ("t/run.sh", b"echo\n"),
            ("t/files/x/big", &[7u8; 100_000]),
        ]);
        let s = scan(a.as_slice(), &opts(Limits::default())).expect("scan");
        assert_eq!(s.top, "t");
        assert_eq!(s.kept.keys().collect::<Vec<_>>(), ["manifest.json"]);
        assert_eq!(s.expanded, 100_007);
        let big = s
            .files
            .iter()
            .find(|f| f.path == "files/x/big")
            .expect("big");
        assert_eq!(big.size, 100_000);
        assert_eq!(
            big.sha256,
            Some(Sha256::digest([7u8; 100_000].as_slice()).into())
        );
    }

    #[test]
    fn refuses_each_limit_naming_the_entry() {
        let a = archive(&[
            ("t/manifest.json", b"{}"),
            ("t/a", &[0u8; 600]),
            ("t/b", &[0u8; 600]),
        ]);
        let with = |f: fn(&mut Limits)| {
            let mut l = Limits::default();
            f(&mut l);
            scan(a.as_slice(), &opts(l)).expect_err("over a limit")
        };
        let e = with(|l| l.entry = 500);
        assert!(
            matches!(&e, ArchiveError::EntryTooLarge { path, size: 600, limit: 500 } if path == "t/a"),
            "{e}"
        );
        assert!(e.is_limit());
        assert!(e
            .to_string()
            .contains("`t/a` expands to 600 bytes, more than the 500 bytes"));
        let e = with(|l| l.expanded = 1000);
        assert!(
            matches!(&e, ArchiveError::ExpandedTooLarge { path, total: 1202, .. } if path == "t/b"),
            "{e}"
        );
        let e = with(|l| l.kept = 1);
        assert!(
            matches!(&e, ArchiveError::KeptTooLarge { path, size: 2, .. } if path == "manifest.json"),
            "{e}"
        );
        let e = with(|l| l.entries = 2);
        assert!(
            matches!(e, ArchiveError::TooManyEntries { limit: 2 }),
            "{e}"
        );
        let e = with(|l| l.names = 20);
        assert!(matches!(e, ArchiveError::NamesTooLong { .. }), "{e}");
    }

    #[test]
    fn an_entry_sums_does_not_allow_is_refused_at_its_header() {
        let empty = EMPTY_SHA256;
        let sums = format!("{empty}  empty\n");
        let a = archive(&[("t/SHA256SUMS", sums.as_bytes()), ("t/empty", &[1u8; 10])]);
        let e = scan(a.as_slice(), &opts(Limits::default())).expect_err("listed as empty");
        assert!(
            matches!(&e, ArchiveError::BeyondSums { path, size: 10, listed: true } if path == "empty"),
            "{e}"
        );
        assert!(e.is_integrity());
        let a = archive(&[
            ("t/SHA256SUMS", sums.as_bytes()),
            ("t/empty", b""),
            ("t/extra", b"x"),
        ]);
        let e = scan(a.as_slice(), &opts(Limits::default())).expect_err("not listed");
        assert!(
            e.to_string()
                .contains("`extra` holds 1 bytes but `SHA256SUMS` does not list it"),
            "{e}"
        );
        // Without the bound (ov inspect), the same archive reads.
        let o = ScanOptions {
            bound_by_sums: false,
            ..opts(Limits::default())
        };
        assert_eq!(scan(a.as_slice(), &o).expect("unbound").files.len(), 3);
    }

    #[test]
    fn long_names_are_read_and_capped() {
        let long = format!("t/{}/f", "d".repeat(300));
        let a = archive(&[(long.as_str(), b"x")]);
        let s = scan(a.as_slice(), &opts(Limits::default())).expect("long name");
        assert_eq!(s.files[0].path, format!("{}/f", "d".repeat(300)));

        // A GNU long-name header of 1 MiB: refused before it is read.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(1 << 20);
        b.append_data(&mut h, "././@LongLink", std::io::repeat(b'a').take(1 << 20))
            .expect("append");
        let raw = b.into_inner().expect("tar");
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).expect("gz");
        let a = gz.finish().expect("gz");
        let e = scan(a.as_slice(), &opts(Limits::default())).expect_err("huge long name");
        assert!(
            matches!(&e, ArchiveError::HeaderTooLarge { size, .. } if *size == 1 << 20),
            "{e}"
        );
    }

    #[test]
    fn refuses_links_escapes_and_two_tops() {
        for (entries, want) in [
            (vec![("t/../x", b"x".as_slice())], "`..` component"),
            (vec![("/t/x", b"x".as_slice())], "absolute path"),
            (
                vec![("t/a", b"x".as_slice()), ("u/b", b"y")],
                "exactly one top",
            ),
            (vec![("t/a", b"x".as_slice()), ("t/a", b"y")], "duplicate"),
        ] {
            let a = archive(&entries);
            let e = scan(a.as_slice(), &opts(Limits::default())).expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "t/l", "/etc/shadow").expect("link");
        let a = b.into_inner().expect("tar").finish().expect("gz");
        let e = scan(a.as_slice(), &opts(Limits::default())).expect_err("link");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let a = archive(&[("t/a", &[5u8; 4000])]);
        let cut = &a[..a.len() / 2];
        assert!(scan(cut, &opts(Limits::default())).is_err());
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(10), "10 bytes");
        assert_eq!(bytes(3 << 30), "3221225472 bytes (3.0 GiB)");
        assert_eq!(bytes(16 << 20), "16777216 bytes (16.0 MiB)");
    }
}
