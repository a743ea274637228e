//! TOML files a person writes (catalogs, `offerd run --config`): parsed with
//! unknown keys refused, and every error naming the file, the key and the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key, or `-` for the file as a whole.
    pub key: String,
    pub reason: String,
}

pub(crate) fn error(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { file: file.to_path_buf(), key: key.into(), reason: reason.into() }
}

/// Largest file read. The largest stock catalog is about 100 KiB; a file
/// hundreds of times that is a mistake, not a catalog.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a whole file that may hold at most `limit` bytes, without reading
/// more than one byte past it: a huge file costs nothing.
///
/// # Errors
/// The file cannot be read, or is larger than `limit` (`InvalidData`).
pub(crate) fn read_limited(file: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// Parses a TOML file, reporting the dotted path of the key that failed.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(file: &Path) -> Result<T, ConfigError> {
    let bytes = read_limited(file, MAX_FILE_BYTES).map_err(|e| error(file, "-", format!("cannot read: {e}")))?;
    parse_bytes(file, &bytes)
}

/// [`parse`] for a file's bytes already read (from a registry, say); `file`
/// names them in errors.
pub(crate) fn parse_bytes<T: for<'de> Deserialize<'de>>(file: &Path, bytes: &[u8]) -> Result<T, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| error(file, "-", format!("cannot read: {e}")))?;
    let at_line = |e: &toml::de::Error| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        line.map(|l| format!(" (line {l})")).unwrap_or_default()
    };
    let de =
        toml::Deserializer::parse(text).map_err(|e| error(file, "-", format!("{}{}", e.message(), at_line(&e))))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        error(file, key, format!("{}{}", inner.message(), at_line(&inner)))
    })
}
