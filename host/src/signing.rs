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
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use wasmsign2::{KeyPair, Module, PublicKey, PublicKeySet, SecretKey};

use crate::trusted_dir::TrustedDir;

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
    #[error("module's signature cannot be read: {0}")]
    Malformed(String),
}

/// The public keys a module must be signed by, from a `--trusted-keys` directory.
#[derive(Debug)]
pub struct TrustedKeys {
    dir: PathBuf,
    keys: PublicKeySet,
}

impl TrustedKeys {
    /// Reads every `*.pub` file of `dir`. The keys decide which modules
    /// run, so `dir` is a [`TrustedDir`]: it, the directories above it and
    /// each key file must be changeable by this user and root alone, and a
    /// key file is a regular file, not a link.
    ///
    /// # Errors
    /// The directory cannot be read or can be changed by others, holds no
    /// `.pub` file, or one is refused or not an ed25519 public key (naming
    /// the file).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let trusted = TrustedDir::open(dir, "--trusted-keys")?;
        let mut names = trusted.names().with_context(|| format!("reading --trusted-keys {}", dir.display()))?;
        // Sorted, so a refusal names the same file every time.
        names.sort();
        let mut keys = PublicKeySet::empty();
        for name in names.iter().filter(|name| Path::new(name).extension().is_some_and(|e| e == "pub")) {
            // Gone since the listing: removed, so no longer trusted.
            let Some(bytes) = trusted.read(name, MAX_KEY_FILE_BYTES)? else { continue };
            let key = PublicKey::from_any(&bytes).map_err(|e| {
                anyhow::anyhow!("{} is not an ed25519 public key: {e}", trusted.path().join(name).display())
            })?;
            // The same key in two files is trusted once.
            let _ = keys.insert(key.attach_default_key_id());
        }
        anyhow::ensure!(!keys.is_empty(), "--trusted-keys {} holds no .pub file", dir.display());
        Ok(Self { dir: dir.to_owned(), keys })
    }

    /// The key id of the trusted key that signed `module`.
    ///
    /// wasmsign2 allocates whatever a length field in the signature section
    /// claims, so the section is walked here first with every length checked
    /// against the bytes there are; only a well-formed section reaches it.
    ///
    /// # Errors
    /// A [`SignatureError`] naming the key ids found in the module, if any.
    pub fn verify(&self, module: &[u8]) -> Result<String, SignatureError> {
        let claimed = match SignatureSection::parse(module) {
            Ok(None) => return Err(SignatureError::Unsigned { dir: self.dir_shown(), trusted: self.ids() }),
            Err(why) => return Err(SignatureError::Malformed(why)),
            Ok(Some(section)) => section.key_ids,
        };
        let verified = self.keys.verify(&mut Cursor::new(module), None).ok().and_then(|valid| {
            // `valid` is never empty on success; take the lowest id for a stable answer.
            valid.iter().map(|k| key_id(k)).min()
        });
        if let Some(id) = verified {
            return Ok(id);
        }
        let trusted_signer = self.keys.items().iter().any(|k| claimed.contains(&key_id(k)));
        let found = shown(&claimed);
        if trusted_signer {
            Err(SignatureError::Invalid { found })
        } else {
            Err(SignatureError::UnknownKey { found, dir: self.dir_shown(), trusted: self.ids() })
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

/// The key ids a module's signature section names (unverified): none when
/// it has no well-formed one.
pub fn signers(module: &[u8]) -> Vec<String> {
    SignatureSection::parse(module).ok().flatten().map(|s| s.key_ids).unwrap_or_default()
}

/// Most key ids named in a refusal; a hostile module may claim hundreds.
const IDS_SHOWN: usize = 4;

fn shown(ids: &[String]) -> String {
    let mut text = ids.iter().take(IDS_SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > IDS_SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - IDS_SHOWN));
    }
    text
}

/// What a well-formed wasmsign2 signature section (the first section of the
/// binary, a custom section named `signature`) claims.
struct SignatureSection {
    key_ids: Vec<String>,
}

impl SignatureSection {
    /// `Ok(None)` when the binary has no signature section; an error when it
    /// has one that is malformed, oversized, or signs more than one hash per
    /// set. (wasmsign2's partial signatures sign a hash per prefix of the
    /// module; a module cut at one would still verify, so offerd accepts
    /// only signatures over the whole module.)
    fn parse(module: &[u8]) -> Result<Option<Self>, String> {
        let mut r = Reader(module.get(8..).ok_or("shorter than a WebAssembly header")?);
        if r.0.first() != Some(&0) {
            return Ok(None);
        }
        r.byte()?;
        let section_len = r.len()?;
        if section_len > MAX_SIGNATURE_SECTION_BYTES {
            return Err(format!(
                "its signature section is {section_len} bytes; the limit is {MAX_SIGNATURE_SECTION_BYTES}"
            ));
        }
        let mut section = Reader(r.take(section_len)?);
        let name_len = section.len()?;
        if section.take(name_len)? != b"signature" {
            return Ok(None);
        }
        // SignatureData: spec version, content type, hash function, then
        // sets, each a length-prefixed blob: its hashes (32 bytes each),
        // then its signatures, each a blob of key id, algorithm, signature.
        section.take(3)?;
        let mut key_ids = Vec::new();
        for _ in 0..section.count()? {
            let mut set = Reader(section.slice()?);
            let hashes = set.len()?;
            if hashes != 1 {
                return Err(format!(
                    "a signature covers {hashes} hashes; offerd takes signatures of the whole module only"
                ));
            }
            set.take(32)?;
            for _ in 0..set.count()? {
                let mut signature = Reader(set.slice()?);
                let key_id = signature.slice()?;
                signature.byte()?;
                signature.slice()?;
                key_ids.push(if key_id.is_empty() { "<no key id>".to_owned() } else { hex(key_id) });
            }
        }
        if !section.0.is_empty() {
            return Err("its signature section has trailing bytes".into());
        }
        key_ids.sort();
        key_ids.dedup();
        Ok(Some(Self { key_ids }))
    }
}

/// A cursor over bytes whose every read is checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.0.split_first().ok_or("its signature section is cut short")?;
        self.0 = rest;
        Ok(b)
    }

    /// An unsigned LEB128 u32, as wasmsign2 reads lengths and counts.
    fn len(&mut self) -> Result<usize, String> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = self.byte()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value as usize);
            }
        }
        Err("its signature section has an over-long number".into())
    }

    /// A count of items that each take at least one byte: never more than remain.
    fn count(&mut self) -> Result<usize, String> {
        let n = self.len()?;
        if n > self.0.len() {
            return Err("its signature section counts more items than it holds".into());
        }
        Ok(n)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err("its signature section is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn slice(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }
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
    // Mode 0755 whatever the umask: the directory may serve as --trusted-keys,
    // which refuses a group-writable one.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
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
        // The same key under a second name is trusted once, not refused.
        std::fs::copy(dir.path().join(format!("{id}.pub")), dir.path().join("copy.pub")).unwrap();
        let trust = TrustedKeys::load(dir.path()).unwrap();
        assert_eq!(trust.verify(&signed).unwrap(), id);
        *signed.last_mut().unwrap() ^= 1;
        assert!(matches!(trust.verify(&signed), Err(SignatureError::Invalid { .. })), "{:?}", trust.verify(&signed));
    }

    #[test]
    fn hostile_lengths_in_the_signature_section_are_refused_before_wasmsign2_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let id = keygen(dir.path()).unwrap();
        let trust = TrustedKeys::load(dir.path()).unwrap();
        let section = |payload: &[u8]| {
            let mut m = EMPTY_COMPONENT.to_vec();
            m.push(0);
            m.push(u8::try_from(payload.len()).unwrap());
            m.extend_from_slice(payload);
            m
        };
        let name = b"\x09signature";
        let hostile: Vec<Vec<u8>> = vec![
            // The section claims 4 GiB.
            [EMPTY_COMPONENT, &[0x00, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat(),
            // Its name claims 4 GiB.
            section(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            // A set of hashes claims 4 GiB.
            section(&[name.as_slice(), &[1, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat()),
            // A signature inside a set claims 4 GiB.
            section(&[name.as_slice(), &[1, 1, 1, 1, 39, 1], &[0; 32], &[1, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat()),
            // Two hashes in a set: a partial signature.
            section(&[name.as_slice(), &[1, 1, 1, 1, 66, 2], &[0; 64], &[0]].concat()),
        ];
        for m in &hostile {
            assert!(matches!(trust.verify(m), Err(SignatureError::Malformed(_))), "{m:?}: {:?}", trust.verify(m));
            assert!(signers(m).is_empty());
        }
        assert!(signers(&[]).is_empty());
        assert!(matches!(trust.verify(&module()), Err(SignatureError::Unsigned { .. })));
        let (signed, _) = sign(&dir.path().join(format!("{id}.key")), &module()).unwrap();
        assert_eq!(trust.verify(&signed).unwrap(), id);
    }

    /// A trusted-keys directory holding one public key, which loads; its
    /// path, resolved as refusals name it; the key's id.
    fn one_trusted_key() -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let keys = std::fs::canonicalize(dir.path()).unwrap().join("keys");
        let id = keygen(&keys).unwrap();
        std::fs::remove_file(keys.join(format!("{id}.key"))).unwrap();
        TrustedKeys::load(&keys).unwrap();
        (dir, keys, id)
    }

    fn refusal(keys: &Path) -> String {
        format!("{:#}", TrustedKeys::load(keys).unwrap_err())
    }

    #[test]
    fn a_group_writable_keys_directory_is_refused_naming_it() {
        let (_dir, keys, _) = one_trusted_key();
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o775)).unwrap();
        let refused = refusal(&keys);
        assert!(refused.contains(&format!("--trusted-keys {} must", keys.display())), "{refused}");
        assert!(refused.contains("writable by nobody else") && refused.contains("mode 775"), "{refused}");
    }

    #[test]
    fn a_world_writable_key_file_is_refused_naming_it() {
        let (_dir, keys, id) = one_trusted_key();
        let public = keys.join(format!("{id}.pub"));
        std::fs::set_permissions(&public, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        let refused = refusal(&keys);
        assert!(refused.contains(&format!("{} must", public.display())) && refused.contains("mode 666"), "{refused}");
    }

    #[test]
    fn a_key_file_that_is_a_symbolic_link_is_refused_naming_it() {
        let (dir, keys, _) = one_trusted_key();
        let elsewhere = dir.path().join("elsewhere");
        let other = keygen(&elsewhere).unwrap();
        let link = keys.join("linked.pub");
        std::os::unix::fs::symlink(elsewhere.join(format!("{other}.pub")), &link).unwrap();
        let refused = refusal(&keys);
        assert!(refused.contains(&format!("{} is a symbolic link", link.display())), "{refused}");
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
