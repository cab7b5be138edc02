//! Stage `runner`, signing keys and provenance: `--sign KEY` becomes a compiler
//! [`Signer`] (an unencrypted OpenSSH key file, or a public key whose private half `ssh-agent`
//! holds, asked over `$SSH_AUTH_SOCK`), and the project's git state is read for the manifest.
//! Invariant: a private key is never written anywhere, an encrypted one is never asked for a
//! passphrase (the agent is the way), and no git repository (or no git) is no provenance, not
//! an error.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ov_compiler::manifest::GitProvenance;
use ov_compiler::sign::ssh_key::{Algorithm, PrivateKey, PublicKey, Signature};
use ov_compiler::sign::{fingerprint, SignError, Signer};

/// Why `--sign KEY` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignKeyError {
    /// The key file cannot be read.
    #[error("cannot read the signing key `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither an OpenSSH private key nor a public key.
    #[error("`{}` is not an OpenSSH private key nor a public key (`ssh-keygen -t ed25519` makes one): {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    /// A passphrase-protected key: ov asks for no passphrase.
    #[error("the signing key `{}` is encrypted: use ssh-agent: `ssh-add {}`, then give the .pub (`--sign {}.pub`)", path.display(), path.display(), path.display())]
    Encrypted { path: PathBuf },
    /// A private key file of a type signed only through the agent.
    #[error("the signing key `{}` is {algorithm}: ov signs with Ed25519 key files itself; add this key to ssh-agent (`ssh-add`) and give its .pub", path.display())]
    Unsupported { path: PathBuf, algorithm: String },
    /// A public key, but no agent to sign with.
    #[error("`{}` is a public key, so its private half must be in ssh-agent, but `SSH_AUTH_SOCK` is not set (start `ssh-agent`, `ssh-add` the key)", path.display())]
    NoAgent { path: PathBuf },
}

/// Read `--sign KEY`: a private key file signs itself; a public key signs through ssh-agent.
pub fn load_signer(path: &Path) -> Result<Box<dyn Signer>, SignKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignKeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |reason: String| SignKeyError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    if text
        .trim_start()
        .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    {
        let key = PrivateKey::from_openssh(&text).map_err(|e| parse(e.to_string()))?;
        if key.is_encrypted() {
            return Err(SignKeyError::Encrypted {
                path: path.to_path_buf(),
            });
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(SignKeyError::Unsupported {
                path: path.to_path_buf(),
                algorithm: key.algorithm().to_string(),
            });
        }
        return Ok(Box::new(key));
    }
    if text.contains("PRIVATE KEY-----") {
        return Err(parse(
            "a PEM private key; ov reads the OpenSSH format (`ssh-keygen -p -f KEY` converts it)"
                .into(),
        ));
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let public = PublicKey::from_openssh(line).map_err(|e| parse(e.to_string()))?;
    let socket = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| SignKeyError::NoAgent {
            path: path.to_path_buf(),
        })?;
    Ok(Box::new(AgentSigner {
        socket: PathBuf::from(socket),
        public,
    }))
}

/// A key held by `ssh-agent`: each signature is one `SSH_AGENTC_SIGN_REQUEST` on a fresh
/// connection to the agent's socket (the protocol is small; no async needed).
#[derive(Debug)]
pub struct AgentSigner {
    /// `$SSH_AUTH_SOCK`.
    pub socket: PathBuf,
    /// The key the agent is asked to sign with.
    pub public: PublicKey,
}

const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
const SSH_AGENT_FAILURE: u8 = 5;
/// `SSH_AGENT_RSA_SHA2_512`: an RSA key signs with `rsa-sha2-512`, as `ssh-keygen -Y sign` does.
const SSH_AGENT_RSA_SHA2_512: u32 = 4;
/// The agent may ask its user to confirm (`ssh-add -c`): wait that long, not forever.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// A sign response is a few hundred bytes; a larger frame is not an agent's.
const AGENT_MAX_FRAME: u32 = 256 * 1024;

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let s = buf.get(4..4 + len)?;
    *buf = &buf[4 + len..];
    Some(s)
}

impl AgentSigner {
    fn fail(&self, what: impl std::fmt::Display) -> SignError {
        SignError::Signer(format!(
            "ssh-agent at `{}` cannot sign with key {}: {what}",
            self.socket.display(),
            fingerprint(&self.public)
        ))
    }

    /// One request and its answer, framed as the agent protocol frames them.
    fn exchange(&self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(AGENT_TIMEOUT))?;
        stream.set_write_timeout(Some(AGENT_TIMEOUT))?;
        let mut frame = (request.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(request);
        stream.write_all(&frame)?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len == 0 || len > AGENT_MAX_FRAME {
            return Err(std::io::Error::other(format!(
                "the agent answered with a frame of {len} bytes"
            )));
        }
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body)?;
        Ok(body)
    }
}

impl Signer for AgentSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign_data(&self, data: &[u8]) -> Result<Signature, SignError> {
        let blob = self.public.to_bytes().map_err(|e| self.fail(e))?;
        let flags = match self.public.algorithm() {
            Algorithm::Rsa { .. } => SSH_AGENT_RSA_SHA2_512,
            _ => 0,
        };
        let mut request = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut request, &blob);
        put_string(&mut request, data);
        request.extend_from_slice(&flags.to_be_bytes());
        let answer = self.exchange(&request).map_err(|e| self.fail(e))?;
        match answer.first() {
            Some(&SSH_AGENT_SIGN_RESPONSE) => {}
            Some(&SSH_AGENT_FAILURE) => {
                return Err(self.fail(
                    "the agent refused (is the key added? `ssh-add -l` lists what it holds)",
                ))
            }
            other => return Err(self.fail(format!("unexpected answer type {other:?}"))),
        }
        let mut rest = &answer[1..];
        let sig = take_string(&mut rest).ok_or_else(|| self.fail("a truncated answer"))?;
        Signature::try_from(sig).map_err(|e| self.fail(e))
    }
}

/// The project's git commit and whether tracked files differ from it, from the system `git`
/// (`None` without a work tree or without git: provenance is then absent, not an error).
pub fn git_state(root: &Path) -> Option<GitProvenance> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    // One process: the branch header names the commit (`# branch.oid <hex>`, or `(initial)`
    // before the first commit), every other line a changed tracked file. Untracked files do not
    // count: the bundle `ov compile` writes into the project would make every second compile
    // "dirty".
    let status = git(&[
        "status",
        "--porcelain=v2",
        "--branch",
        "--untracked-files=no",
    ])?;
    let commit = status
        .lines()
        .find_map(|l| l.strip_prefix("# branch.oid "))?
        .trim();
    if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(GitProvenance {
        commit: commit.to_string(),
        dirty: status.lines().any(|l| !l.starts_with('#')),
    })
}

/// Why `ov verify --allowed-signers` refused a bundle's signature.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No `SHA256SUMS.sig`.
    #[error("the bundle is unsigned (no SHA256SUMS.sig), and `{}` requires a signature by a key it lists", file.display())]
    Unsigned { file: PathBuf },
    /// The signature's key is not listed (for namespace `ov-bundle`).
    #[error("the bundle is signed by key {fingerprint}, which `{}` does not list for namespace `ov-bundle`", file.display())]
    Unlisted { fingerprint: String, file: PathBuf },
    /// Listed key, but the signature does not match `SHA256SUMS`.
    #[error("the signature by key {fingerprint} does not verify against SHA256SUMS with `{}`: {detail}", file.display())]
    Bad {
        fingerprint: String,
        file: PathBuf,
        detail: String,
    },
    /// `ssh-keygen` could not be run, or the policy file cannot be read.
    #[error("cannot check the signature with `ssh-keygen -Y verify` and `{}`", file.display())]
    Keygen {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Check `signature` (the bytes of `SHA256SUMS.sig`) over `sums` against an OpenSSH
/// allowed_signers file, returning the principal and the key's fingerprint.
///
/// This runs the system `ssh-keygen -Y find-principals` and `-Y verify`, not a parser of ov's
/// own: it is the very check run.sh makes on the target, so the two cannot disagree, and it
/// knows every allowed_signers option (`namespaces=`, `valid-after=`, `cert-authority`) that a
/// small parser would have to refuse.
pub fn verify_signature(
    sums: &[u8],
    signature: Option<&[u8]>,
    allowed: &Path,
) -> Result<(String, String), SignatureError> {
    let file = allowed.to_path_buf();
    let keygen_err = |source| SignatureError::Keygen {
        file: file.clone(),
        source,
    };
    std::fs::metadata(allowed).map_err(keygen_err)?;
    let Some(signature) = signature else {
        return Err(SignatureError::Unsigned { file });
    };
    let fp = ov_compiler::sign::signature_key(signature)
        .map(|k| fingerprint(&k))
        .unwrap_or_else(|| "(not an SSH signature)".into());
    let dir = tempfile::tempdir().map_err(keygen_err)?;
    let sig_path = dir.path().join("SHA256SUMS.sig");
    let sums_path = dir.path().join("SHA256SUMS");
    std::fs::write(&sig_path, signature).map_err(keygen_err)?;
    std::fs::write(&sums_path, sums).map_err(keygen_err)?;
    let found = std::process::Command::new("ssh-keygen")
        .args(["-Y", "find-principals", "-s"])
        .arg(&sig_path)
        .arg("-f")
        .arg(allowed)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(keygen_err)?;
    let principals: Vec<String> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if !found.status.success() || principals.is_empty() {
        return Err(SignatureError::Unlisted {
            fingerprint: fp,
            file,
        });
    }
    let mut detail = String::new();
    for principal in &principals {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", ov_compiler::sign::NAMESPACE, "-I"])
            .arg(principal)
            .arg("-f")
            .arg(allowed)
            .arg("-s")
            .arg(&sig_path)
            .stdin(std::fs::File::open(&sums_path).map_err(keygen_err)?)
            .output()
            .map_err(keygen_err)?;
        if out.status.success() {
            return Ok((principal.clone(), fp));
        }
        detail = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; ");
    }
    Err(SignatureError::Bad {
        fingerprint: fp,
        file,
        detail,
    })
}
