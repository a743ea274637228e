//! Replacing a file so that a crash leaves the old or the new one, never a
//! torn one: a uniquely named temporary file beside it, fsynced, renamed
//! over it, then the directory fsynced so the rename itself survives.

use std::io::Write;
use std::path::Path;

/// # Errors
/// The temporary file cannot be written or renamed, or the directory synced.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}
