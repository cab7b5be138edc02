//! Stage `bundle` (signing): an OpenSSH `SSHSIG` signature of a bundle's `SHA256SUMS`, stored
//! beside it as `SHA256SUMS.sig`; invariant: the signature covers the exact `SHA256SUMS` bytes
//! under the namespace [`NAMESPACE`] with sha512, so `ssh-keygen -Y verify -n ov-bundle` on the
//! target accepts it, and an Ed25519 signature (deterministic) keeps the archive byte-identical.
//!
//! The key itself is behind [`Signer`]: an unencrypted Ed25519 key file signs here
//! ([`ssh_key::PrivateKey`] implements it); a key held by `ssh-agent` signs in the runner, which
//! speaks the agent protocol. Either way this module builds the signed data and the armored text.

use serde::{Deserialize, Serialize};
pub use ssh_key;
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, Signature, SigningKey, SshSig};
use thiserror::Error;

/// The `SSHSIG` namespace of a bundle signature (`ssh-keygen -Y verify -n ov-bundle`).
pub const NAMESPACE: &str = "ov-bundle";

/// The signature's file name in the bundle's top directory (not listed in `SHA256SUMS`, which it
/// signs).
pub const SIG_FILE: &str = "SHA256SUMS.sig";

/// The largest `SHA256SUMS.sig` a reader accepts (an armored RSA-16384 signature is under 5 KiB).
pub const SIG_MAX_BYTES: u64 = 16 * 1024;

/// Why a bundle could not be signed.
#[derive(Debug, Error)]
pub enum SignError {
    /// The key cannot sign (an algorithm this build cannot sign with, a malformed key).
    #[error("cannot sign with key {fingerprint}: {reason}")]
    Key {
        /// `SHA256:…` of the key.
        fingerprint: String,
        /// Why.
        reason: String,
    },
    /// The agent (or another external signer) failed.
    #[error("{0}")]
    Signer(String),
    /// The signature does not verify with the key that was to make it.
    #[error("the signature made for key {fingerprint} does not verify with that key (the agent signed with another key?)")]
    WrongKey {
        /// `SHA256:…` of the key.
        fingerprint: String,
    },
}

/// Something that holds a private key and signs `SSHSIG` signed data with it.
pub trait Signer {
    /// The public half of the signing key (its comment is listed in the manifest).
    fn public_key(&self) -> &PublicKey;

    /// Sign `data`, the blob [`SshSig::signed_data`] builds, returning the SSH signature
    /// (algorithm name and signature bytes). RSA keys must sign with `rsa-sha2-512`.
    fn sign_data(&self, data: &[u8]) -> Result<Signature, SignError>;
}

// Generic so the `signature` crate's trait (a supertrait of `SigningKey`) is in reach without
// depending on that crate here.
fn try_sign<S: SigningKey>(key: &S, data: &[u8]) -> Result<Signature, String> {
    key.try_sign(data).map_err(|e| e.to_string())
}

impl Signer for PrivateKey {
    fn public_key(&self) -> &PublicKey {
        PrivateKey::public_key(self)
    }

    fn sign_data(&self, data: &[u8]) -> Result<Signature, SignError> {
        try_sign(self, data).map_err(|e| SignError::Key {
            fingerprint: fingerprint(PrivateKey::public_key(self)),
            reason: e,
        })
    }
}

/// The signer as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerInfo {
    /// The key's algorithm, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key's comment (often `user@host`); may be empty.
    pub comment: String,
}

/// `SHA256:<base64>` of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// What the manifest says about `signer`, known before anything is signed.
pub fn signer_info(signer: &dyn Signer) -> SignerInfo {
    let key = signer.public_key();
    SignerInfo {
        algorithm: key.algorithm().as_str().to_string(),
        fingerprint: fingerprint(key),
        comment: key.comment().to_string(),
    }
}

/// Sign `sums` (the bytes of `SHA256SUMS`): the armored `SSHSIG` text of `SHA256SUMS.sig`
/// (`-----BEGIN SSH SIGNATURE-----`, LF line endings). An Ed25519 signature is checked with the
/// public key before it is returned (an agent could hold another key under the same name).
pub fn sign_sums(signer: &dyn Signer, sums: &[u8]) -> Result<String, SignError> {
    let key = signer.public_key();
    let key_err = |e: ssh_key::Error| SignError::Key {
        fingerprint: fingerprint(key),
        reason: e.to_string(),
    };
    let data = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, sums).map_err(key_err)?;
    let signature = signer.sign_data(&data)?;
    let sig = SshSig::new(
        key.key_data().clone(),
        NAMESPACE,
        HashAlg::Sha512,
        signature,
    )
    .map_err(key_err)?;
    if key.algorithm() == ssh_key::Algorithm::Ed25519 && key.verify(NAMESPACE, sums, &sig).is_err()
    {
        return Err(SignError::WrongKey {
            fingerprint: fingerprint(key),
        });
    }
    sig.to_pem(LineEnding::LF).map_err(key_err)
}

/// The key of an armored `SSHSIG` (`SHA256SUMS.sig`), read without checking the signature: for
/// messages and `ov inspect`; `None` when the text is not a signature.
pub fn signature_key(armored: &[u8]) -> Option<PublicKey> {
    let sig = SshSig::from_pem(armored).ok()?;
    Some(PublicKey::new(sig.public_key().clone(), ""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A fresh Ed25519 key from the real `ssh-keygen`, so the test reads the format operators
    /// have, not one this crate wrote.
    fn keygen(dir: &std::path::Path, name: &str, comment: &str) -> PrivateKey {
        let path = dir.join(name);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&path)
            .status()
            .expect("run ssh-keygen");
        assert!(st.success());
        PrivateKey::read_openssh_file(&path).expect("read the key ssh-keygen wrote")
    }

    /// `ssh-keygen -Y verify` with an allowed_signers file listing `key` as `principal`.
    fn keygen_verify(
        dir: &std::path::Path,
        key: &PublicKey,
        sig: &str,
        data: &[u8],
    ) -> (bool, String) {
        let allowed = dir.join("allowed_signers");
        std::fs::write(
            &allowed,
            format!(
                "ops@example namespaces=\"ov-bundle\" {}\n",
                key.to_openssh().expect("openssh text")
            ),
        )
        .expect("write allowed_signers");
        let sig_path = dir.join("SHA256SUMS.sig");
        std::fs::write(&sig_path, sig).expect("write sig");
        let data_path = dir.join("SHA256SUMS");
        std::fs::write(&data_path, data).expect("write data");
        let out = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", NAMESPACE, "-I", "ops@example", "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(&sig_path)
            .stdin(std::fs::File::open(&data_path).expect("open data"))
            .output()
            .expect("run ssh-keygen -Y verify");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn ssh_keygen_accepts_our_signature_and_refuses_other_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = keygen(dir.path(), "k", "builder@example");
        let sums = b"0000000000000000000000000000000000000000000000000000000000000000  run.sh\n";
        let sig = sign_sums(&key, sums).expect("sign");
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"), "{sig}");
        let (ok, out) = keygen_verify(dir.path(), key.public_key(), &sig, sums);
        assert!(ok, "ssh-keygen refused our signature: {out}");
        assert!(out.contains(&fingerprint(key.public_key())), "{out}");
        // One byte more and it is refused: the signature covers exactly these bytes.
        let mut other = sums.to_vec();
        other.push(b'\n');
        let (ok, out) = keygen_verify(dir.path(), key.public_key(), &sig, &other);
        assert!(!ok, "ssh-keygen accepted other bytes: {out}");
        // Deterministic (Ed25519): the same key and bytes give the same text.
        assert_eq!(sig, sign_sums(&key, sums).expect("sign again"));
        // The key read back from the signature is the signer's.
        let back = signature_key(sig.as_bytes()).expect("key of the signature");
        assert_eq!(fingerprint(&back), fingerprint(key.public_key()));
    }

    #[test]
    fn signer_info_names_the_key_as_ssh_keygen_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = keygen(dir.path(), "k", "builder@example");
        let info = signer_info(&key);
        let out = Command::new("ssh-keygen")
            .args(["-l", "-f"])
            .arg(dir.path().join("k.pub"))
            .output()
            .expect("ssh-keygen -l");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&info.fingerprint), "{text} vs {info:?}");
        assert_eq!(info.algorithm, "ssh-ed25519");
        assert_eq!(info.comment, "builder@example");
    }

    /// A signer that signs with another key than the one it names is caught.
    struct Liar(PrivateKey, PrivateKey);
    impl Signer for Liar {
        fn public_key(&self) -> &PublicKey {
            self.0.public_key()
        }
        fn sign_data(&self, data: &[u8]) -> Result<Signature, SignError> {
            self.1.sign_data(data)
        }
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = keygen(dir.path(), "a", "a");
        let b = keygen(dir.path(), "b", "b");
        let e = sign_sums(&Liar(a, b), b"x").expect_err("wrong key");
        assert!(matches!(e, SignError::WrongKey { .. }), "{e}");
    }
}
