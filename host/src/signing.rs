//! Signed modules: ed25519 signatures in wasmsign2's format (the WebAssembly
//! signature proposal: a `signature` custom section first in the binary,
//! covering everything after it), so any wasmsign2-aware tool can check an
//! offerd signature and the reverse.
//!
//! A key is named by its key id: the first 12 bytes of HMAC-SHA256("key_id",
//! public key) in hex, wasmsign2's default. `offerd keygen` writes
//! `<key-id>.key` (secret, mode 0600) and `<key-id>.pub`; a trusted-keys
//! directory is a directory of `.pub` files.

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::Context;
use wasmsign2::{KeyPair, Module, PublicKey, PublicKeySet, SecretKey};

/// Largest key file read: PEM keys are a few hundred bytes.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;
/// Largest signature section read: wasmsign2 allows 64 hashes and 256
/// signatures, about 25 KiB.
const MAX_SIGNATURE_SECTION_BYTES: usize = 64 * 1024;

/// Why a module's signature is refused. The module is refused with it.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("module is not signed; --trusted-keys {dir} requires a signature by one of its keys ({trusted})")]
    Unsigned { dir: String, trusted: String },
    #[error("module is signed by key {found}, which is not in --trusted-keys {dir} ({trusted})")]
    UnknownKey { found: String, dir: String, trusted: String },
    #[error("module's signature by key {found} does not verify (the module was changed after signing)")]
    Invalid { found: String },
}

/// The public keys a module must be signed by, from a `--trusted-keys` directory.
#[derive(Debug)]
pub struct TrustedKeys {
    dir: PathBuf,
    keys: PublicKeySet,
}

impl TrustedKeys {
    /// Reads every `*.pub` file of `dir`.
    ///
    /// # Errors
    /// The directory cannot be read, holds no `.pub` file, or one is not an
    /// ed25519 public key (naming the file).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut keys = PublicKeySet::empty();
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading --trusted-keys {}", dir.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("reading --trusted-keys {}", dir.display()))?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let bytes = read_key_file(&path)?;
                let key = PublicKey::from_any(&bytes)
                    .map_err(|e| anyhow::anyhow!("{} is not an ed25519 public key: {e}", path.display()))?;
                keys.insert(key.attach_default_key_id()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
        }
        anyhow::ensure!(!keys.is_empty(), "--trusted-keys {} holds no .pub file", dir.display());
        Ok(Self { dir: dir.to_owned(), keys })
    }

    /// The key id of the trusted key that signed `module`.
    ///
    /// # Errors
    /// A [`SignatureError`] naming the key ids found in the module, if any.
    pub fn verify(&self, module: &[u8]) -> Result<String, SignatureError> {
        let found = signers(module);
        let verified = self.keys.verify(&mut Cursor::new(module), None).ok().and_then(|valid| {
            // `valid` is never empty on success; take the lowest id for a stable answer.
            valid.iter().map(|k| key_id(k)).min()
        });
        match verified {
            Some(id) => Ok(id),
            None if found.is_empty() => Err(SignatureError::Unsigned { dir: self.dir_shown(), trusted: self.ids() }),
            None => {
                let trusted_signer = self.keys.items().iter().any(|k| found.contains(&key_id(k)));
                let found = found.join(", ");
                if trusted_signer {
                    Err(SignatureError::Invalid { found })
                } else {
                    Err(SignatureError::UnknownKey { found, dir: self.dir_shown(), trusted: self.ids() })
                }
            }
        }
    }

    fn dir_shown(&self) -> String {
        self.dir.display().to_string()
    }

    fn ids(&self) -> String {
        let mut ids: Vec<String> = self.keys.items().iter().map(key_id).collect();
        ids.sort();
        ids.join(", ")
    }
}

/// The key ids a module's signature section names (unverified), or none.
/// Only the first section is read, and only when its declared size is
/// within bounds, so a hostile module cannot make this allocate.
pub fn signers(module: &[u8]) -> Vec<String> {
    let Some(section) = first_section(module) else { return Vec::new() };
    let Ok(Some(wasmsign2::Section::Custom(custom))) = wasmsign2::Section::deserialize(&mut Cursor::new(section))
    else {
        return Vec::new();
    };
    if !custom.is_signature_header() {
        return Vec::new();
    }
    let Ok(data) = custom.signature_data() else { return Vec::new() };
    let mut ids: Vec<String> = data
        .signed_hashes_set
        .iter()
        .flat_map(|set| &set.signatures)
        .map(|s| s.key_id.as_deref().map_or_else(|| "<no key id>".to_owned(), hex))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The first section of a WebAssembly binary, id and size included, when
/// its declared size fits both the binary and [`MAX_SIGNATURE_SECTION_BYTES`].
fn first_section(module: &[u8]) -> Option<&[u8]> {
    let rest = module.get(8..)?;
    let (&id, rest) = rest.split_first()?;
    if id != 0 {
        return None;
    }
    let (mut len, mut used) = (0usize, 0usize);
    for (i, &byte) in rest.iter().take(5).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        used = i + 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    if len > MAX_SIGNATURE_SECTION_BYTES || used + len > rest.len() {
        return None;
    }
    Some(&module[8..8 + 1 + used + len])
}

/// A new key pair written to `dir` as `<key-id>.key` (mode 0600) and
/// `<key-id>.pub`; returns the key id.
///
/// # Errors
/// The directory cannot be created or a file written; an existing key file
/// is never overwritten.
pub fn keygen(dir: &Path) -> anyhow::Result<String> {
    let pair = KeyPair::generate();
    let public = pair.pk.attach_default_key_id();
    let id = key_id(&public);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_path = dir.join(format!("{id}.key"));
    write_new(&secret_path, pair.sk.to_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(format!("{id}.pub")), public.to_pem().as_bytes(), 0o644)?;
    Ok(id)
}

/// `module` signed with the secret key in `key_file`, any earlier signature
/// replaced; and the key id.
///
/// # Errors
/// The key file is unreadable or not an ed25519 secret key, or the module is
/// not a WebAssembly binary.
pub fn sign(key_file: &Path, module: &[u8]) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes = read_key_file(key_file)?;
    let secret = SecretKey::from_any(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not an ed25519 secret key: {e}", key_file.display()))?;
    let public = PublicKey { pk: secret.sk.public_key(), key_id: None }.attach_default_key_id();
    let id = key_id(&public);
    let parsed =
        Module::deserialize(&mut Cursor::new(module)).map_err(|e| anyhow::anyhow!("not a WebAssembly binary: {e}"))?;
    let signed = secret.sign(parsed, public.key_id()).map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    let mut out = Vec::with_capacity(module.len() + 256);
    signed.serialize(&mut out).map_err(|e| anyhow::anyhow!("writing the signed module: {e}"))?;
    Ok((out, id))
}

/// The key's default key id in hex, computed from the key itself.
fn key_id(key: &PublicKey) -> String {
    let with_id = PublicKey { pk: key.pk, key_id: None }.attach_default_key_id();
    hex(with_id.key_id().expect("attach_default_key_id sets an id"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn read_key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    crate::config_file::read_limited(path, MAX_KEY_FILE_BYTES).with_context(|| format!("reading {}", path.display()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid component: header only.
    const EMPTY_COMPONENT: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    fn module() -> Vec<u8> {
        // One custom section "x" with payload "data".
        let mut m = EMPTY_COMPONENT.to_vec();
        m.extend_from_slice(&[0x00, 0x06, 0x01, b'x', b'd', b'a', b't', b'a']);
        m
    }

    #[test]
    fn a_module_signed_by_a_trusted_key_verifies_and_any_other_is_refused_with_the_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let (trusted_dir, other_dir) = (dir.path().join("trusted"), dir.path().join("other"));
        let id = keygen(&trusted_dir).unwrap();
        let other = keygen(&other_dir).unwrap();
        assert_eq!(id.len(), 24);
        let mode = std::fs::metadata(trusted_dir.join(format!("{id}.key"))).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        // The secret keys stay out of the trusted directory's key set.
        std::fs::remove_file(trusted_dir.join(format!("{id}.key"))).unwrap();
        let trust = TrustedKeys::load(&trusted_dir).unwrap();

        let (signed, signer) = sign(&other_dir.join(format!("{other}.key")), &module()).unwrap();
        assert_eq!(signer, other);
        assert_eq!(signers(&signed), vec![other.clone()]);
        let refused = trust.verify(&signed).unwrap_err().to_string();
        assert!(refused.contains(&other) && refused.contains(&id), "{refused}");

        assert!(matches!(trust.verify(&module()), Err(SignatureError::Unsigned { .. })));

        std::fs::write(dir.path().join("again.key"), "").unwrap();
        assert!(sign(&dir.path().join("again.key"), &signed).is_err(), "an empty key file signs nothing");
    }

    #[test]
    fn a_signed_module_changed_afterwards_is_refused_as_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let id = keygen(dir.path()).unwrap();
        let (mut signed, _) = sign(&dir.path().join(format!("{id}.key")), &module()).unwrap();
        let trust = TrustedKeys::load(dir.path()).unwrap();
        assert_eq!(trust.verify(&signed).unwrap(), id);
        *signed.last_mut().unwrap() ^= 1;
        assert!(matches!(trust.verify(&signed), Err(SignatureError::Invalid { .. })), "{:?}", trust.verify(&signed));
    }

    #[test]
    fn a_hostile_first_section_size_is_not_read() {
        let mut m = EMPTY_COMPONENT.to_vec();
        m.extend_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(signers(&m).is_empty());
        assert!(first_section(&m).is_none());
        assert!(signers(&[]).is_empty());
    }

    #[test]
    fn keygen_never_overwrites_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = keygen(dir.path()).unwrap();
        let path = dir.path().join(format!("{id}.key"));
        assert!(write_new(&path, b"x", 0o600).is_err());
        assert!(std::fs::read_to_string(path).unwrap().contains("PRIVATE KEY"));
    }
}
