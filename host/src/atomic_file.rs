//! Replacing a file so that a crash leaves the old or the new one, never a
//! torn one: a uniquely named temporary file beside it, fsynced, renamed
//! over it, then the directory fsynced so the rename itself survives.

use std::io::Write;
use std::path::Path;

/// # Errors
/// The temporary file cannot be written or renamed, or the directory synced.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, prefix) = dir_and_prefix(path);
    let mut tmp = tempfile::Builder::new().prefix(&prefix).suffix(SUFFIX).tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the temporary files of `path` that a process killed mid-write
/// left behind; how many. Only for a caller that holds the file's lock: a
/// running writer's temporary file would go too.
///
/// # Errors
/// The directory cannot be listed or a leftover removed.
pub fn remove_leftovers(path: &Path) -> std::io::Result<usize> {
    let (dir, prefix) = dir_and_prefix(path);
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(&prefix) && n.ends_with(SUFFIX)) {
            std::fs::remove_file(dir.join(&name))?;
            removed += 1;
        }
    }
    Ok(removed)
}

const SUFFIX: &str = ".tmp";

/// The directory of `path`, and the name prefix of its temporary files.
fn dir_and_prefix(path: &Path) -> (&Path, String) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    (dir, format!(".{name}."))
}
