//! Signed run logs: who vouches for a run, beside the hash chain that proves it is intact.
//!
//! The chain proves integrity, not authorship: whoever rewrites a log's answers can compute a
//! new chain. A signature binds the log's final chain hash (which covers every frame, the header
//! with the plugin's hash among them) to a key the auditor trusts. `run --sign-key FILE` writes
//! `run.sig` beside `run.log` when the run ends; `verify --public-key FILE` checks it.
//!
//! Keys are ed25519 (`keygen` writes a pair). The secret key file holds the 32-byte seed in
//! hex, the public key file the 32-byte key in hex, one line each. `run.sig` is JSON:
//! `{"algorithm", "public_key", "final_chain_hash", "plugin_sha256", "signature"}`, the
//! signature over [`message`].

use std::path::Path;

use anyhow::{Context, bail};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::runlog::Hash;

/// The signature file of a run, `run.sig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSignature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The run log's final chain hash the signature covers, hex.
    pub final_chain_hash: String,
    /// The plugin's sha256 from the header, hex (also covered by the chain; named for readers).
    pub plugin_sha256: String,
    /// The signature over [`message`], hex.
    pub signature: String,
}

/// What is signed: a domain tag, the final chain hash and the plugin's hash, so a signature
/// cannot be replayed over anything else.
fn message(final_chain_hash: &Hash, plugin_sha256: &str) -> Vec<u8> {
    let mut message = b"drpo run log signature v1\0".to_vec();
    message.extend_from_slice(final_chain_hash);
    message.extend_from_slice(plugin_sha256.as_bytes());
    message
}

/// Writes a new key pair: the secret key to `secret` (readable by its owner only) and the public
/// key to `secret` with `.pub` appended. Refuses to overwrite either.
pub fn keygen(secret: &Path) -> anyhow::Result<std::path::PathBuf> {
    let public = public_key_path(secret);
    for path in [secret, public.as_path()] {
        if path.exists() {
            bail!(
                "{} exists already; choose another file (keygen never overwrites a key)",
                path.display()
            );
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no random numbers for a key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    write_private(secret, &format!("{}\n", hex::encode(seed)))?;
    std::fs::write(
        &public,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )
    .with_context(|| format!("cannot write {}", public.display()))?;
    Ok(public)
}

/// The public key file of the secret key file `secret`.
pub fn public_key_path(secret: &Path) -> std::path::PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The 32 bytes a key file holds in hex.
fn read_key_bytes(path: &Path, what: &str) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok());
    bytes.with_context(|| {
        format!(
            "{} is not an ed25519 {what}: expected 64 hex digits on one line (`drpo-host keygen` \
             writes them)",
            path.display()
        )
    })
}

/// Checks that `path` holds a secret key, so a run that is to be signed fails before it spends
/// anything rather than at its end.
pub fn check_secret_key(path: &Path) -> anyhow::Result<()> {
    read_key_bytes(path, "secret key").map(|_| ())
}

/// Signs a run whose log ends with `final_chain_hash` with the secret key in `key_file`.
pub fn sign(
    key_file: &Path,
    final_chain_hash: &Hash,
    plugin_sha256: &str,
) -> anyhow::Result<RunSignature> {
    let key = SigningKey::from_bytes(&read_key_bytes(key_file, "secret key")?);
    let signature = key.sign(&message(final_chain_hash, plugin_sha256));
    Ok(RunSignature {
        algorithm: "ed25519".into(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        final_chain_hash: hex::encode(final_chain_hash),
        plugin_sha256: plugin_sha256.into(),
        signature: hex::encode(signature.to_bytes()),
    })
}

/// Why a signature does not vouch for a log.
#[derive(Debug, thiserror::Error)]
pub enum SignatureProblem {
    #[error("run.sig is not a signature file: {0}")]
    Unreadable(String),
    #[error(
        "run.sig covers a log whose final chain hash is {signed}, but this log's is {actual}: \
         the log was changed after it was signed"
    )]
    OtherLog { signed: String, actual: String },
    #[error("run.sig was made with the key {found}, not with the public key given ({expected})")]
    OtherKey { found: String, expected: String },
    #[error("run.sig's signature does not match what it claims to sign")]
    Invalid,
}

/// Checks `signature` against a log whose final chain hash is `final_chain_hash`, and, when
/// `trusted` is given, that it was made with that public key.
pub fn check(
    signature: &RunSignature,
    final_chain_hash: &Hash,
    trusted: Option<&Path>,
) -> anyhow::Result<Result<(), SignatureProblem>> {
    if let Some(trusted) = trusted {
        let expected = hex::encode(read_key_bytes(trusted, "public key")?);
        if expected != signature.public_key {
            return Ok(Err(SignatureProblem::OtherKey {
                found: signature.public_key.clone(),
                expected,
            }));
        }
    }
    Ok(check_signature(signature, final_chain_hash))
}

fn check_signature(
    signature: &RunSignature,
    final_chain_hash: &Hash,
) -> Result<(), SignatureProblem> {
    let unreadable = |what: &str| SignatureProblem::Unreadable(what.to_owned());
    if signature.algorithm != "ed25519" {
        return Err(unreadable("its algorithm is not ed25519"));
    }
    let actual = hex::encode(final_chain_hash);
    if signature.final_chain_hash != actual {
        return Err(SignatureProblem::OtherLog {
            signed: signature.final_chain_hash.clone(),
            actual,
        });
    }
    let key: [u8; 32] = hex::decode(&signature.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| unreadable("its public key is not 32 bytes in hex"))?;
    let key =
        VerifyingKey::from_bytes(&key).map_err(|_| unreadable("its public key is invalid"))?;
    let bytes: [u8; 64] = hex::decode(&signature.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| unreadable("its signature is not 64 bytes in hex"))?;
    key.verify(
        &message(final_chain_hash, &signature.plugin_sha256),
        &Signature::from_bytes(&bytes),
    )
    .map_err(|_| SignatureProblem::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_log_only_and_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("key");
        let public = keygen(&secret).unwrap();
        assert_eq!(public, dir.path().join("key.pub"));
        let hash = [7u8; 32];
        let signed = sign(&secret, &hash, "ab").unwrap();
        assert!(check(&signed, &hash, Some(&public)).unwrap().is_ok());
        assert!(check(&signed, &hash, None).unwrap().is_ok());

        let other_log = check(&signed, &[8u8; 32], Some(&public)).unwrap();
        assert!(matches!(other_log, Err(SignatureProblem::OtherLog { .. })));

        // A changed plugin hash or signature byte no longer verifies.
        let mut forged = signed.clone();
        forged.plugin_sha256 = "cd".into();
        assert!(matches!(
            check(&forged, &hash, None).unwrap(),
            Err(SignatureProblem::Invalid)
        ));

        // Someone else's key: re-signed with it, the signature holds only for that key.
        let stranger = dir.path().join("stranger");
        keygen(&stranger).unwrap();
        let resigned = sign(&stranger, &hash, "ab").unwrap();
        assert!(matches!(
            check(&resigned, &hash, Some(&public)).unwrap(),
            Err(SignatureProblem::OtherKey { .. })
        ));

        let again = keygen(&secret).unwrap_err().to_string();
        assert!(again.contains("never overwrites"), "{again}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_key_file_of_the_wrong_shape_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not hex\n").unwrap();
        let error = sign(&bad, &[0u8; 32], "ab").unwrap_err().to_string();
        assert!(
            error.contains("bad.key is not an ed25519 secret key"),
            "{error}"
        );
    }
}
