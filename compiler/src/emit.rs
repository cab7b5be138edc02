//! Stage `emit` (hand-off to other engines): a compiled bundle as an Ansible playbook with a role
//! (`ov compile --emit ansible DIR`) or as `#cloud-config` user-data (`--emit cloud-init FILE`),
//! rendered from `templates/emit/`. Invariants: every value reaches YAML through the data
//! engine's quoting formatter and shell through the shell engine's (Rust builds neither); the
//! output depends only on the bundle; on the target nothing of the bundle runs unless the archive
//! matches the digest compiled into the hand-off, and root stages it only in directories that
//! are root's alone, as the push's bootstrap does.

use serde::Serialize;
use thiserror::Error;

use crate::bundle::Bundle;
pub use crate::render::yaml_quote;
use crate::render::{Engine, RenderError};

/// Where root stages a bundle on the target (the push's work directory): it and every directory
/// above it must be root's alone.
pub const WORK_BASE: &str = "/var/lib/overthink/work";

/// Where the emitted user-data has cloud-init write the archive, its `.sha256` and the script
/// that applies them.
pub const CLOUD_INIT_DIR: &str = "/var/lib/overthink/cloud-init";

/// The role's name in the emitted Ansible directory.
pub const ANSIBLE_ROLE: &str = "ov_bundle";

/// The default of `--max-user-data`: the strictest of the common clouds (AWS EC2).
pub const DEFAULT_MAX_USER_DATA: u64 = 16 * 1024;

/// A user-data size limit of a cloud, in bytes of the user-data itself (before any base64 the
/// API wants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDataLimit {
    /// The cloud and the field, e.g. `AWS EC2`.
    pub name: &'static str,
    /// The most bytes of user-data it takes.
    pub bytes: u64,
    /// How the provider states it.
    pub rule: &'static str,
}

/// The common user-data limits, smallest first.
pub const USER_DATA_LIMITS: &[UserDataLimit] = &[
    UserDataLimit {
        name: "AWS EC2",
        bytes: 16 * 1024,
        rule: "16 KB raw, before base64",
    },
    UserDataLimit {
        name: "OpenStack Nova",
        bytes: 65535 / 4 * 3,
        rule: "65535 bytes base64-encoded",
    },
    UserDataLimit {
        name: "Azure custom data",
        bytes: 64 * 1024 / 4 * 3,
        rule: "64 KB base64-encoded",
    },
    UserDataLimit {
        name: "GCP metadata value",
        bytes: 256 * 1024,
        rule: "256 KB per metadata value",
    },
];

/// Why a hand-off could not be emitted.
#[derive(Debug, Error)]
pub enum EmitError {
    /// A template of `templates/emit/` failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// cloud-init runs the bundle for one account, and the deploy names none.
    #[error(
        "deploy `{deploy}` names no target account, and the first-boot run needs one for \
         `run.sh --user`: give the VM an `ssh.user` (the account cloud-init creates), or emit for \
         Ansible, where each host's `ov_user` names it"
    )]
    NoUser {
        /// The deploy.
        deploy: String,
    },
    /// The user-data does not fit the limit asked for, even gzip-compressed.
    #[error(
        "the user-data for `{deploy}` is {plain} bytes ({gzipped} gzip-compressed), more than the \
         limit of {max} bytes (`--max-user-data`); a cloud that takes more: {limits}; or hand \
         the bundle over with `--emit ansible`, or push it with `ov push`"
    )]
    TooLarge {
        /// The deploy.
        deploy: String,
        /// Bytes of the plain user-data.
        plain: usize,
        /// Bytes of it gzip-compressed.
        gzipped: usize,
        /// The limit asked for.
        max: u64,
        /// `NAME SIZE` of each known limit it would fit.
        limits: String,
    },
    /// `--bundle-url` is not a URL the first-boot script can download from.
    #[error(
        "`--bundle-url {url}` {why}: give the http:// or https:// address the archive will be \
         served from, e.g. `https://example.com/bundles/{archive}`"
    )]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
        /// The archive's file name (for the example).
        archive: String,
    },
    /// gzip failed (it does not on memory input; kept for the signature).
    #[error("cannot gzip the user-data: {0}")]
    Gzip(#[source] std::io::Error),
}

/// One file of an emitted directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedFile {
    /// Path relative to the directory, `/`-separated.
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
}

#[derive(Serialize)]
struct AnsibleVars<'a> {
    play_name: String,
    deploy: &'a str,
    archive: String,
    sha256: &'a str,
    top: &'a str,
    user: &'a str,
    user_text: String,
    base: &'a str,
    chain: Vec<String>,
}

/// `ov compile --emit ansible`: `playbook.yml`, the role `ov_bundle` (tasks, vars with the
/// digest, the archive and its `.sha256` under `files/`) and `README.md`, sorted by path.
pub fn ansible(bundle: &Bundle, engine: &Engine) -> Result<Vec<EmittedFile>, EmitError> {
    let deploy = &bundle.manifest.deploy;
    let user = deploy.user.as_deref().unwrap_or("");
    let ctx = AnsibleVars {
        play_name: format!("ov deploy {}", deploy.name),
        deploy: &deploy.name,
        archive: bundle.archive_name(),
        sha256: &bundle.sha256,
        top: &bundle.top,
        user,
        user_text: if user.is_empty() {
            "the bundle's own default (its user, else the account sudo came from)".into()
        } else {
            format!("`{user}`")
        },
        base: WORK_BASE,
        chain: chain(WORK_BASE),
    };
    let role = format!("roles/{ANSIBLE_ROLE}");
    let text = |name: &str| -> Result<Vec<u8>, EmitError> {
        Ok(engine.render_data(name, &ctx)?.into_bytes())
    };
    let mut files = vec![
        EmittedFile {
            path: "README.md".into(),
            data: text("emit/ansible/README.md.j2")?,
        },
        EmittedFile {
            path: "playbook.yml".into(),
            data: text("emit/ansible/playbook.yml.j2")?,
        },
        EmittedFile {
            path: format!("{role}/files/{}", bundle.archive_name()),
            data: bundle.archive.clone(),
        },
        EmittedFile {
            path: format!("{role}/files/{}.sha256", bundle.archive_name()),
            data: bundle.sha256_text().into_bytes(),
        },
        EmittedFile {
            path: format!("{role}/tasks/main.yml"),
            data: text("emit/ansible/tasks.yml.j2")?,
        },
        EmittedFile {
            path: format!("{role}/vars/main.yml"),
            data: text("emit/ansible/vars.yml.j2")?,
        },
    ];
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[derive(Serialize)]
struct FirstBoot<'a> {
    src: &'a str,
    /// With `--bundle-url`: where the script downloads the archive (else it is beside it).
    url: Option<&'a str>,
    /// The archive's size in bytes (a download of another size is refused before hashing).
    size: usize,
    archive: String,
    expected: &'a str,
    top: &'a str,
    base: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct UserDataUrlCtx {
    script: String,
}

#[derive(Serialize)]
struct UserDataCtx {
    archive_path: String,
    archive_b64: String,
    sha256_path: String,
    sha256_text: String,
    script_path: String,
    script: String,
}

/// Emitted user-data: the bytes to hand to the cloud, and both sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    /// What to write: the plain `#cloud-config`, or it gzip-compressed when only that fits.
    pub data: Vec<u8>,
    /// Bytes of the plain user-data.
    pub plain: usize,
    /// Bytes of it gzip-compressed.
    pub gzipped: usize,
    /// Whether [`UserData::data`] is the gzip-compressed form (cloud-init reads both).
    pub is_gzip: bool,
}

/// `ov compile --emit cloud-init`: `#cloud-config` user-data that writes the archive (base64 of
/// its gzip bytes), its `.sha256` and the first-boot script into [`CLOUD_INIT_DIR`] and runs the
/// script once (`runcmd`). The plain text when it fits `max` bytes, else gzip-compressed when
/// that fits; [`EmitError::TooLarge`] when neither does.
pub fn cloud_init(bundle: &Bundle, engine: &Engine, max: u64) -> Result<UserData, EmitError> {
    let archive = bundle.archive_name();
    let script = first_boot(bundle, engine, None)?;
    let text = engine.render_data(
        "emit/cloud-init/user-data.yml.j2",
        &UserDataCtx {
            archive_path: format!("{CLOUD_INIT_DIR}/{archive}"),
            archive_b64: base64(&bundle.archive),
            sha256_path: format!("{CLOUD_INIT_DIR}/{archive}.sha256"),
            sha256_text: bundle.sha256_text(),
            script_path: format!("{CLOUD_INIT_DIR}/{}.firstboot.sh", bundle.top),
            script,
        },
    )?;
    sized(bundle, text, max)
}

/// `ov compile --emit cloud-init --bundle-url URL`: `#cloud-config` user-data that carries no
/// archive, only the first-boot script (`runcmd`), which downloads the archive from `url` into a
/// private directory of root's and applies it only if it matches the digest compiled in. A few
/// KiB whatever the bundle's size, so it fits every cloud's limit; the archive is served by the
/// operator. Sizes and errors as [`cloud_init`], and [`EmitError::BadUrl`].
pub fn cloud_init_fetching(
    bundle: &Bundle,
    engine: &Engine,
    max: u64,
    url: &str,
) -> Result<UserData, EmitError> {
    check_url(url).map_err(|why| EmitError::BadUrl {
        url: url.to_string(),
        why,
        archive: bundle.archive_name(),
    })?;
    let script = first_boot(bundle, engine, Some(url))?;
    let text = engine.render_data(
        "emit/cloud-init/user-data-url.yml.j2",
        &UserDataUrlCtx { script },
    )?;
    sized(bundle, text, max)
}

/// The first-boot script for the deploy's account: the archive beside it, or downloaded from
/// `url`.
fn first_boot(bundle: &Bundle, engine: &Engine, url: Option<&str>) -> Result<String, EmitError> {
    let user = bundle
        .manifest
        .deploy
        .user
        .as_deref()
        .ok_or_else(|| EmitError::NoUser {
            deploy: bundle.manifest.deploy.name.clone(),
        })?;
    Ok(engine.render(
        "emit/cloud-init/firstboot.sh.j2",
        &FirstBoot {
            src: CLOUD_INIT_DIR,
            url,
            size: bundle.archive.len(),
            archive: bundle.archive_name(),
            expected: &bundle.sha256,
            top: &bundle.top,
            base: WORK_BASE,
            user,
        },
    )?)
}

/// Whether `url` is one the first-boot script downloads from: `http://` or `https://`, a host,
/// and nothing a shell or a downloader could take for more than one URL (no whitespace or
/// control characters). Else why not.
fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("is not an http:// or https:// URL")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds whitespace or a control character");
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with('@') || host.ends_with('@') {
        return Err("names no host");
    }
    Ok(())
}

/// `text` as user-data of at most `max` bytes: plain, else gzip-compressed, else
/// [`EmitError::TooLarge`].
fn sized(bundle: &Bundle, text: String, max: u64) -> Result<UserData, EmitError> {
    let gz = crate::gzip::gzip(text.as_bytes(), 9).map_err(EmitError::Gzip)?;
    let (plain, gzipped) = (text.len(), gz.len());
    let fits = |n: usize| u64::try_from(n).is_ok_and(|n| n <= max);
    if fits(plain) {
        return Ok(UserData {
            data: text.into_bytes(),
            plain,
            gzipped,
            is_gzip: false,
        });
    }
    if fits(gzipped) {
        return Ok(UserData {
            data: gz,
            plain,
            gzipped,
            is_gzip: true,
        });
    }
    let limits: Vec<String> = USER_DATA_LIMITS
        .iter()
        .filter(|l| u64::try_from(gzipped).is_ok_and(|g| g <= l.bytes))
        .map(|l| format!("{} `--max-user-data {}`", l.name, l.bytes))
        .collect();
    Err(EmitError::TooLarge {
        deploy: bundle.manifest.deploy.name.clone(),
        plain,
        gzipped,
        max,
        limits: if limits.is_empty() {
            "none of AWS EC2, OpenStack, Azure, GCP".into()
        } else {
            limits.join(", ")
        },
    })
}

/// `path` and every directory above it, from `/` down.
fn chain(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut p = String::new();
    for part in path.split('/').filter(|s| !s.is_empty()) {
        p.push('/');
        p.push_str(part);
        out.push(p.clone());
    }
    out
}

/// Standard base64 (RFC 4648, with padding), as cloud-init's `encoding: b64` reads it.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc, "{raw:?}");
        }
    }

    #[test]
    fn yaml_quote_escapes_everything_that_could_end_or_fold_the_scalar() {
        assert_eq!(yaml_quote("a b"), "\"a b\"");
        assert_eq!(
            yaml_quote("x\"\\\n\t\r\u{7f}é\u{2028}😀"),
            "\"x\\\"\\\\\\n\\t\\x0d\\x7f\\u00e9\\u2028\\U0001f600\""
        );
        // Nothing but printable ASCII between the quotes.
        let q = yaml_quote("{{ lookup('pipe', 'id') }}: - [x] # y\u{85}");
        assert!(q.chars().all(|c| (' '..='~').contains(&c)), "{q}");
    }

    #[test]
    fn bundle_urls_are_http_or_https_with_a_host_and_one_word() {
        for ok in [
            "https://example.com/b/vm-x.tar.gz",
            "http://10.0.0.1:8080/vm-x.tar.gz",
            "https://u@h/x?sig=a%20b&t=1",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("ftp://h/x", "is not an http:// or https:// URL"),
            ("/srv/x.tar.gz", "is not an http:// or https:// URL"),
            ("https:///x", "names no host"),
            ("https://@/x", "names no host"),
            ("https://h/x y", "holds whitespace or a control character"),
            (
                "https://h/x\n-o/etc/passwd",
                "holds whitespace or a control character",
            ),
        ] {
            assert_eq!(check_url(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn chain_lists_every_directory_from_the_root() {
        assert_eq!(
            chain("/var/lib/overthink/work"),
            [
                "/",
                "/var",
                "/var/lib",
                "/var/lib/overthink",
                "/var/lib/overthink/work"
            ]
        );
    }
}
