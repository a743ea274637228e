//! One process per file or directory: an exclusive lock on a lock file
//! (released by the kernel when the process ends, however it ends) that
//! also holds the holder's pid, for the message the next process gets.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;

/// Takes `lock_path` for `subject`, or says which process holds it; `what`
/// names the rule ("one process per checkpoint file").
///
/// # Errors
/// Another process holds it, or the lock file cannot be opened.
pub(crate) fn take(lock_path: &Path, subject: &Path, what: &str) -> anyhow::Result<File> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "{} is in use by another offerd (pid {}, holding {}); {what}",
                subject.display(),
                holder.trim(),
                lock_path.display()
            );
        }
        Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", lock_path.display())),
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}
