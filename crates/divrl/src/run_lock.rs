//! One process per run folder, and no debris from killed runs.
//!
//! A trainer holds an advisory exclusive `flock(2)` on `<run>/.divrl-lock` while it reads or
//! writes the folder. The kernel drops the lock when the holder's file is closed, which includes
//! every way a process can die (kill -9 too), so a lock is never stale; the file itself may
//! stay and means nothing. A second process gets one error naming the holder's pid (written into
//! the lock file by the holder).
//!
//! Whoever takes the lock first in a process also removes the temporary files that writers
//! killed midway left in the folder: `.tmp-<name>-<pid>/` checkpoint folders and the
//! `.<name>.tmp<pid>` / `.<name>.tmp<pid>.safetensors` files of the atomic writers, when
//! `<pid>` is no running process. Nothing else is touched.
//!
//! Within one process the lock is re-entrant: [`lock_run_folder`] hands out shared guards, and
//! the lock goes when the last one is dropped.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context, Result};

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".divrl-lock";

/// Exclusive ownership of a run folder by this process, released when the last clone drops.
#[derive(Debug)]
pub struct RunLock {
    dir: PathBuf,
    _file: File,
}

impl RunLock {
    /// The locked folder (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Run folders locked by this process.
static HELD: Mutex<Vec<(PathBuf, Weak<RunLock>)>> = Mutex::new(Vec::new());

/// Takes (creating `dir` if needed) or shares this process's lock on the run folder `dir`.
/// Fails at once, naming the holder's pid, when another process holds it. The first taker in
/// the process removes stale temporary files (see the module docs).
pub fn lock_run_folder(dir: &Path) -> Result<Arc<RunLock>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let canon = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.retain(|(_, w)| w.strong_count() > 0);
    if let Some(lock) = held
        .iter()
        .find(|(p, _)| *p == canon)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(lock);
    }
    let path = canon.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "a process that has not written its pid yet".to_string(),
            };
            bail!(
                "{} is in use by another divrl run ({holder}): wait for it to finish, or choose another --out",
                dir.display()
            );
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    remove_stale_temporaries(&canon)?;
    let lock = Arc::new(RunLock {
        dir: canon.clone(),
        _file: file,
    });
    held.push((canon, Arc::downgrade(&lock)));
    Ok(lock)
}

/// The writer pid in a temporary name made by this crate's atomic writers, if `name` is one:
/// `.tmp-<anything>-<pid>` (a folder) or `.<anything>.tmp<pid>[.safetensors]` (a file).
pub fn temporary_owner(name: &str, is_dir: bool) -> Option<u32> {
    let digits = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if is_dir {
        let rest = name.strip_prefix(".tmp-")?;
        let (_, pid) = rest.rsplit_once('-')?;
        return digits(pid);
    }
    let rest = name.strip_prefix('.')?;
    let rest = rest.strip_suffix(".safetensors").unwrap_or(rest);
    let (stem, pid) = rest.rsplit_once(".tmp")?;
    if stem.is_empty() {
        return None;
    }
    digits(pid)
}

/// Whether `pid` names a running process (or one we may not signal, which also exists).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes, under `root` (three levels deep, no symlinks followed), the temporaries whose
/// writer is dead. Returns what it removed.
pub fn remove_stale_temporaries(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, removed: &mut Vec<PathBuf>) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(_) => return Ok(()),
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_symlink() {
                continue;
            }
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match temporary_owner(name, ft.is_dir()) {
                Some(pid) if !alive(pid) => {
                    if ft.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    }
                    .with_context(|| format!("removing the stale {}", path.display()))?;
                    removed.push(path);
                }
                Some(_) => {}
                None if ft.is_dir() && depth > 1 => walk(&path, depth - 1, removed)?,
                None => {}
            }
        }
        Ok(())
    }
    let mut removed = Vec::new();
    walk(root, 3, &mut removed)?;
    if !removed.is_empty() {
        tracing::info!(
            "removed {} temporary file(s) left by a killed run in {}",
            removed.len(),
            root.display()
        );
    }
    Ok(removed)
}
