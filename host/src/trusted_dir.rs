//! A directory whose contents are as trusted as the binary: the compiled
//! modules of `--module-cache` (native code offerd runs) and the public
//! keys of `--trusted-keys` (which decide what modules offerd runs).
//!
//! Trusting the contents means trusting whoever can change them, so only
//! this user and root may:
//! - the directory and each file read from it belong to this user or root
//!   and are writable by neither group nor others, and a file is a regular
//!   file, not a link to one somewhere else;
//! - each directory above it belongs to this user or root and is writable
//!   by neither group nor others, unless it is root's and sticky like
//!   `/tmp` (others may add entries there, but not rename or remove ours).
//!
//! A check holds only for what was checked. The configured path is resolved
//! once, at open (a symbolic link there is followed then, so a deployment
//! may link its cache elsewhere); that resolved path is then walked from `/`
//! without following links, each directory checked on its open handle, and
//! the last handle is kept. Every later read, listing, write, rename and
//! removal goes through that handle, never through a path resolved again:
//! replacing the directory or one above it after open changes nothing that
//! offerd reads. Files are opened without following links and checked on
//! the opened descriptor.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Group- and world-writable mode bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;
/// The sticky bit: in a directory, only an entry's owner may rename or remove it.
const STICKY: u32 = 0o1000;
/// Ends the names of [`TrustedDir::replace`]'s temporary files.
const TEMPORARY_SUFFIX: &str = ".tmp";

/// A checked directory, held open.
#[derive(Debug)]
pub(crate) struct TrustedDir {
    /// The directory as resolved at open; only for messages.
    path: PathBuf,
    /// The option that named it (`--module-cache`); only for messages.
    flag: &'static str,
    /// The checked directory, for as long as this value lives.
    handle: OwnedFd,
}

impl TrustedDir {
    /// Resolves `path`, checks it and every directory above it, and holds it.
    ///
    /// # Errors
    /// The directory cannot be resolved or opened, or it or a directory
    /// above it can be changed by someone other than this user or root
    /// (naming that directory and why).
    pub(crate) fn open(path: &Path, flag: &'static str) -> anyhow::Result<Self> {
        let resolved = std::fs::canonicalize(path).with_context(|| format!("opening {flag} {}", path.display()))?;
        let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut walked = PathBuf::new();
        let mut handle: Option<OwnedFd> = None;
        for component in resolved.components() {
            let name = match component {
                Component::RootDir => OsStr::new("/"),
                Component::Normal(name) => name,
                // `canonicalize` leaves no `.`, `..` or prefix.
                _ => bail!("{flag} {} did not resolve to a plain path", path.display()),
            };
            if let Some(above) = &handle {
                let stat = stat_of(above, &walked, flag)?;
                if !owned_by_us(&stat) || (stat.st_mode & WRITABLE_BY_OTHERS != 0 && !root_sticky(&stat)) {
                    bail!(
                        "{flag} {} is inside {}, which {} (owner {}, mode {:o}): whoever can write there can replace it",
                        resolved.display(),
                        walked.display(),
                        if owned_by_us(&stat) {
                            "is writable by others and is not root's and sticky like /tmp"
                        } else {
                            "belongs to neither this user nor root"
                        },
                        stat.st_uid,
                        stat.st_mode & 0o7777
                    );
                }
            }
            walked.push(name);
            let opened = rustix::fs::openat(
                handle.as_ref().map_or(rustix::fs::CWD, AsFd::as_fd),
                name,
                directory,
                Mode::empty(),
            )
            .with_context(|| {
                format!("opening {flag} {} at {} (without following links)", resolved.display(), walked.display())
            })?;
            handle = Some(opened);
        }
        let handle = handle.context("a resolved path starts at /")?;
        let stat = stat_of(&handle, &resolved, flag)?;
        if !owned_by_us(&stat) || stat.st_mode & WRITABLE_BY_OTHERS != 0 {
            bail!(
                "{flag} {} must belong to this user or root and be writable by nobody else (owner {}, mode {:o}): \
                 what is in it is trusted as offerd itself",
                resolved.display(),
                stat.st_uid,
                stat.st_mode & 0o7777
            );
        }
        Ok(Self { path: resolved, flag, handle })
    }

    /// The directory as resolved at open.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The names in the directory, read through the handle.
    ///
    /// # Errors
    /// The directory cannot be listed.
    pub(crate) fn names(&self) -> std::io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.handle)? {
            let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// The file `name` itself (a link is not followed).
    ///
    /// # Errors
    /// There is no such entry or it cannot be examined.
    pub(crate) fn stat(&self, name: &OsStr) -> std::io::Result<Stat> {
        Ok(rustix::fs::statat(&self.handle, name, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// The bytes of the file `name`, or `None` when there is no such file.
    ///
    /// # Errors
    /// The file is a link, not a regular file, can be changed by someone
    /// other than this user or root, is larger than `limit` bytes, or cannot
    /// be read; the message names it and says which.
    pub(crate) fn read(&self, name: &OsStr, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        let flag = self.flag;
        // Non-blocking, so a FIFO planted under the name cannot hang the open.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(&self.handle, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => bail!("{flag} {} is a symbolic link; only regular files are read", path.display()),
            Err(e) => {
                return Err(std::io::Error::from(e)).with_context(|| format!("opening {flag} {}", path.display()));
            }
        };
        let stat = stat_of(&file, &path, flag)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            bail!("{flag} {} is not a regular file", path.display());
        }
        if !owned_by_us(&stat) || stat.st_mode & WRITABLE_BY_OTHERS != 0 {
            bail!(
                "{flag} {} must belong to this user or root and be writable by nobody else (owner {}, mode {:o})",
                path.display(),
                stat.st_uid,
                stat.st_mode & 0o7777
            );
        }
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("reading {flag} {}", path.display()))?;
        if bytes.len() as u64 > limit {
            bail!("{flag} {} is larger than {limit} bytes", path.display());
        }
        Ok(Some(bytes))
    }

    /// Replaces the file `name` (mode 0600) so that a crash leaves the old
    /// or the new one: a temporary file, fsynced, renamed over it, then the
    /// directory fsynced so the rename itself survives.
    ///
    /// # Errors
    /// The temporary file cannot be written or renamed, or the directory synced.
    pub(crate) fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let temporary = format!(".{name}.{:016x}{TEMPORARY_SUFFIX}", fastrand::u64(..));
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut file = File::from(rustix::fs::openat(&self.handle, &temporary, flags, Mode::RUSR | Mode::WUSR)?);
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| Ok(rustix::fs::renameat(&self.handle, &temporary, &self.handle, name)?));
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.handle, &temporary, AtFlags::empty());
        }
        written?;
        Ok(rustix::fs::fsync(&self.handle)?)
    }

    /// Removes the file `name`.
    ///
    /// # Errors
    /// It cannot be removed.
    pub(crate) fn remove(&self, name: &OsStr) -> std::io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.handle, name, AtFlags::empty())?)
    }

    /// Removes the temporary files that a process killed mid-[`replace`](Self::replace)
    /// left behind; how many. Only for a directory that offerd alone writes:
    /// another process's write under way fails (it is only a cache).
    ///
    /// # Errors
    /// The directory cannot be listed or a leftover removed.
    pub(crate) fn remove_leftovers(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for name in self.names()? {
            let bytes = name.as_bytes();
            if bytes.starts_with(b".") && bytes.ends_with(TEMPORARY_SUFFIX.as_bytes()) {
                self.remove(&name)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn stat_of(fd: impl AsFd, path: &Path, flag: &str) -> anyhow::Result<Stat> {
    rustix::fs::fstat(fd).map_err(std::io::Error::from).with_context(|| format!("examining {flag} {}", path.display()))
}

/// Belongs to this user or root.
fn owned_by_us(stat: &Stat) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    stat.st_uid == 0 || stat.st_uid == unsafe { libc::geteuid() }
}

/// A directory like `/tmp`: root's, with the sticky bit.
fn root_sticky(stat: &Stat) -> bool {
    stat.st_uid == 0 && stat.st_mode & STICKY != 0
}
