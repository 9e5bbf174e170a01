//! Writing qc's output files so that no user file is ever lost or half-written.
//!
//! What qc promises (spec/limits.md, "Files qc writes"):
//! - **Replaced whole or not at all.** A regular-file destination is written to an anonymous
//!   temporary file in its own directory (Linux `O_TMPFILE`: a killed run leaves nothing
//!   behind), synced, given a temporary name and renamed over the destination; the directory is
//!   then synced. Where `O_TMPFILE` is unavailable the temporary file is named from the start
//!   (`.NAME.XXXXXX.qc-tmp`) and removed on every path but a kill.
//! - **Pairs commit `.qir` first.** A `.qir` and the weights it names are renamed `.qir` first:
//!   the new `.qir` records the new weights' length and hash, so a kill between the two renames
//!   leaves a `.qir` that refuses the old weights with a diagnostic rather than reading them. A
//!   failed second rename puts the previous `.qir` back (kept until then as a hard link).
//! - **Non-regular files are written into, never replaced**: `-o /dev/stdout`, a FIFO, a device.
//! - **Symlinks are followed**: the file a link points to is replaced and the link stays.
//! - **Messages name the destination**, never a temporary path.
//!
//! Writes go through [`Transaction`]: stage each file (its bytes are written and synced at once),
//! then [`Transaction::commit`] makes them visible, in the reverse of the staging order: stage a
//! file before the file that names it, so that the naming file, which carries the check, replaces
//! its previous version first. Tests drive the commit's steps one by one
//! through [`Transaction::commit_with`], failing or "killing" it at each.

use std::fs::{File, Metadata};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempPath};

/// A destination named on the command line, classified.
#[derive(Debug)]
pub struct Destination {
    /// The path as the user named it (for messages and for paths relative to it).
    pub requested: PathBuf,
    kind: DestinationKind,
}

#[derive(Debug)]
enum DestinationKind {
    /// A regular file, existing or not, replaced by rename at `path` (a symlink's target).
    Replace { path: PathBuf, existing: Option<Metadata> },
    /// An existing device, FIFO or socket: opened and written into.
    WriteInto(Metadata),
}

/// Identity of a file: equal for two paths that reach the same file (links, `..`, symlinks).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    /// The identity of the file at `path`, if it exists.
    pub fn of(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::from_metadata(&m))
    }

    fn from_metadata(m: &Metadata) -> FileId {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId { device: m.dev(), inode: m.ino() }
        }
        #[cfg(not(unix))]
        {
            let _ = m;
            FileId { device: 0, inode: 0 }
        }
    }
}

impl Destination {
    /// Classifies `requested`: what is there now decides how it is written.
    pub fn resolve(requested: &Path) -> Result<Destination, String> {
        let shown = requested.display();
        let kind = match std::fs::metadata(requested) {
            Ok(m) if m.is_dir() => return Err(format!("cannot write {shown}: it is a directory")),
            Ok(m) if m.is_file() => {
                let path = std::fs::canonicalize(requested).map_err(|e| format!("cannot write {shown}: {e}"))?;
                DestinationKind::Replace { path, existing: Some(m) }
            }
            Ok(m) => DestinationKind::WriteInto(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(requested).is_ok() {
                    return Err(format!("cannot write {shown}: it is a symbolic link to a file that does not exist"));
                }
                let dir = parent_dir(requested);
                if !dir.is_dir() {
                    return Err(format!("cannot write {shown}: the directory {} does not exist", dir.display()));
                }
                DestinationKind::Replace { path: requested.to_path_buf(), existing: None }
            }
            Err(e) => return Err(format!("cannot write {shown}: {e}")),
        };
        Ok(Destination { requested: requested.to_path_buf(), kind })
    }

    /// Where the file is written: a symlink's target, or the path as named. Files that belong
    /// beside it (its weights) go beside this path.
    pub fn path(&self) -> &Path {
        match &self.kind {
            DestinationKind::Replace { path, .. } => path,
            DestinationKind::WriteInto(_) => &self.requested,
        }
    }

    /// The file that is there now, if any.
    pub fn existing(&self) -> Option<FileId> {
        match &self.kind {
            DestinationKind::Replace { existing, .. } => existing.as_ref().map(FileId::from_metadata),
            DestinationKind::WriteInto(m) => Some(FileId::from_metadata(m)),
        }
    }

    /// Whether the destination is (or will be) a regular file, replaced as a whole.
    pub fn is_regular(&self) -> bool {
        matches!(self.kind, DestinationKind::Replace { .. })
    }

    /// Whether `self` and `other` name the same file, existing or not.
    pub fn same_file(&self, other: &Destination) -> bool {
        match (self.existing(), other.existing()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => absolute(&self.requested) == absolute(&other.requested),
            _ => false,
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn absolute(path: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(parent_dir(path)).ok()?;
    Some(dir.join(path.file_name()?))
}

/// A step of [`Transaction::commit_with`], reported to its hook before it is taken.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Giving staged file `i` its temporary name.
    Name(usize),
    /// Keeping a hard link to the file that destination `i` replaces.
    Backup(usize),
    /// Renaming staged file `i` over its destination.
    Rename(usize),
    /// Syncing the directories (the backups are gone).
    Finish,
}

/// What a commit hook makes of a step.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The step fails with an I/O error (the commit rolls back as for a real one).
    Fail,
    /// The process dies before the step: nothing more happens, not even clean-up.
    Kill,
}

/// A written but not yet visible output file.
struct Staged {
    destination: Destination,
    temp: Temp,
}

enum Temp {
    /// `O_TMPFILE`: no name until committed; vanishes if the process dies.
    Anonymous(File),
    /// A named temporary file, removed on drop.
    Named(TempPath),
    /// Written straight into a non-regular destination: nothing to commit.
    Written,
}

/// Output files that become visible together, the last staged first.
#[derive(Default)]
pub struct Transaction {
    staged: Vec<Staged>,
}

impl Transaction {
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Writes one output's bytes with `write` (buffered) into a temporary file beside it and
    /// syncs it; a non-regular destination is written directly. Returns what `write` returned.
    pub fn stage<T>(
        &mut self,
        destination: Destination,
        write: impl FnOnce(&mut dyn Write) -> Result<T, String>,
    ) -> Result<T, String> {
        let shown = destination.requested.display().to_string();
        let fail = |e: std::io::Error| format!("cannot write {shown}: {e}");
        let (file, temp_path) = match &destination.kind {
            DestinationKind::WriteInto(_) => {
                let file = std::fs::OpenOptions::new().write(true).open(&destination.requested).map_err(fail)?;
                let mut out = BufWriter::new(file);
                let value = write(&mut out)?;
                out.flush().map_err(fail)?;
                self.staged.push(Staged { destination, temp: Temp::Written });
                return Ok(value);
            }
            DestinationKind::Replace { path, existing } => {
                let dir = parent_dir(path);
                let mode = existing.as_ref().map(permission_bits);
                match anonymous_temp(dir, mode) {
                    Some(file) => (file, None),
                    None => {
                        let named = tempfile::Builder::new()
                            .prefix(&temp_prefix(path))
                            .suffix(TEMP_SUFFIX)
                            .tempfile_in(dir)
                            .map_err(fail)?;
                        let (file, temp_path) = named.into_parts();
                        set_mode(&file, mode.unwrap_or(0o644)).map_err(fail)?;
                        (file, Some(temp_path))
                    }
                }
            }
        };
        let mut out = BufWriter::new(file);
        let value = write(&mut out)?;
        let file = out.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        let temp = match temp_path {
            Some(path) => Temp::Named(path),
            None => Temp::Anonymous(file),
        };
        self.staged.push(Staged { destination, temp });
        Ok(value)
    }

    /// Makes every staged file visible, the last staged first; on failure the destinations
    /// renamed so far get their previous files back and no temporary file is left.
    pub fn commit(self) -> Result<(), String> {
        self.commit_with(&mut |_| None)
    }

    /// [`Transaction::commit`], asking `hook` before each step whether to inject a fault. Steps
    /// number the files in commit order.
    pub fn commit_with(self, hook: &mut dyn FnMut(Step) -> Option<Fault>) -> Result<(), String> {
        let count = self.staged.len();
        let mut files: Vec<Committing> = Vec::with_capacity(count);
        for (i, staged) in self.staged.into_iter().rev().enumerate() {
            let temp = match staged.temp {
                Temp::Written => None,
                Temp::Named(path) => Some(path),
                Temp::Anonymous(file) => {
                    inject(hook(Step::Name(i)), &mut files)?;
                    let named = name_anonymous(&file, &staged.destination);
                    Some(named.map_err(|e| cannot_write(&staged.destination, e))?)
                }
            };
            files.push(Committing { destination: staged.destination, temp, backup: None });
        }
        // Every destination renamed before the last one keeps its previous file, to put back if
        // a later rename fails.
        for i in 0..count.saturating_sub(1) {
            let DestinationKind::Replace { path, existing: Some(_) } = &files[i].destination.kind else { continue };
            let path = path.clone();
            inject(hook(Step::Backup(i)), &mut files)?;
            // A file system without hard links cannot keep one: the new .qir's weights check
            // still catches a pair left half-replaced.
            files[i].backup = hard_link_beside(&path).ok();
        }
        for i in 0..count {
            let Some(temp) = files[i].temp.take() else { continue };
            let path = files[i].destination.path();
            let renamed = match hook(Step::Rename(i)) {
                Some(Fault::Kill) => {
                    let _ = temp.keep();
                    return Err(abandon(&mut files));
                }
                Some(Fault::Fail) => Err(std::io::Error::other("injected failure")),
                None => temp.persist(path).map_err(|e| e.error),
            };
            if let Err(e) = renamed {
                let message = cannot_write(&files[i].destination, e);
                restore(&mut files[..i]);
                return Err(message);
            }
        }
        // The backups go before the (slow) directory sync, so that a kill during it leaves no
        // temporary file.
        for f in &mut files {
            f.backup = None;
        }
        if hook(Step::Finish) == Some(Fault::Kill) {
            return Err(abandon(&mut files));
        }
        let mut dirs: Vec<&Path> = files
            .iter()
            .filter_map(|f| match &f.destination.kind {
                DestinationKind::Replace { path, .. } => Some(parent_dir(path)),
                DestinationKind::WriteInto(_) => None,
            })
            .collect();
        dirs.dedup();
        for dir in dirs {
            // Makes the renames durable; a file system that cannot sync a directory has made
            // them as durable as it can.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

/// One file of a commit in progress.
struct Committing {
    destination: Destination,
    /// The new contents under a temporary name, until renamed into place.
    temp: Option<TempPath>,
    /// A hard link to the file the destination held, until every rename is done.
    backup: Option<TempPath>,
}

fn cannot_write(destination: &Destination, e: std::io::Error) -> String {
    format!("cannot write {}: {e}", destination.requested.display())
}

/// Applies a hook's verdict on a step that has not changed anything yet.
fn inject(fault: Option<Fault>, files: &mut [Committing]) -> Result<(), String> {
    match fault {
        None => Ok(()),
        Some(Fault::Fail) => Err("cannot write: injected failure".into()),
        Some(Fault::Kill) => Err(abandon(files)),
    }
}

/// Leaves the files as a killed process would: every named temporary file and backup stays.
fn abandon(files: &mut [Committing]) -> String {
    for f in files {
        for path in [f.temp.take(), f.backup.take()].into_iter().flatten() {
            let _ = path.keep();
        }
    }
    "killed (fault injection)".into()
}

/// Puts back the files that `renamed` replaced (or removes the ones they created).
fn restore(renamed: &mut [Committing]) {
    for f in renamed {
        let DestinationKind::Replace { path, existing } = &f.destination.kind else { continue };
        match f.backup.take() {
            Some(backup) => {
                let _ = backup.persist(path);
            }
            None if existing.is_none() => {
                let _ = std::fs::remove_file(path);
            }
            None => {}
        }
    }
}

#[cfg(unix)]
fn permission_bits(m: &Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn permission_bits(_: &Metadata) -> u32 {
    0o644
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &File, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// An unnamed file in `dir` (Linux `O_TMPFILE`), created with `mode` (or 0666 less the umask,
/// as for any new file); `None` where the kernel or file system has no such files.
#[cfg(target_os = "linux")]
fn anonymous_temp(dir: &Path, mode: Option<u32>) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::from_raw_mode(mode.unwrap_or(0o666))).ok()?;
    let file = File::from(fd);
    // The umask applied at creation; an existing file's mode is kept exactly.
    if let Some(mode) = mode {
        set_mode(&file, mode).ok()?;
    }
    Some(file)
}

#[cfg(not(target_os = "linux"))]
fn anonymous_temp(_: &Path, _: Option<u32>) -> Option<File> {
    None
}

/// Links an `O_TMPFILE` file into its directory under a fresh temporary name.
#[cfg(target_os = "linux")]
fn name_anonymous(file: &File, destination: &Destination) -> std::io::Result<TempPath> {
    use std::os::fd::AsRawFd;
    let DestinationKind::Replace { path, .. } = &destination.kind else {
        return Err(std::io::Error::other("not a regular destination"));
    };
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let named = temp_name_beside(path, |temp| {
        rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            rustix::fs::CWD,
            temp,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(std::io::Error::from)
    })?;
    Ok(named.into_temp_path())
}

#[cfg(not(target_os = "linux"))]
fn name_anonymous(_: &File, _: &Destination) -> std::io::Result<TempPath> {
    Err(std::io::Error::other("anonymous temporary files exist only on Linux"))
}

/// A hard link to `path` under a fresh temporary name beside it (removed on drop).
fn hard_link_beside(path: &Path) -> std::io::Result<TempPath> {
    Ok(temp_name_beside(path, |temp| std::fs::hard_link(path, temp))?.into_temp_path())
}

/// Runs `create` on fresh names `.NAME.XXXXXX.qc-tmp` beside `path` until one is free.
fn temp_name_beside(
    path: &Path,
    create: impl FnMut(&Path) -> std::io::Result<()>,
) -> std::io::Result<NamedTempFile<()>> {
    tempfile::Builder::new().prefix(&temp_prefix(path)).suffix(TEMP_SUFFIX).make_in(parent_dir(path), create)
}

/// Temporary files are `.NAME.XXXXXX.qc-tmp`: hidden, and named after what they will become.
const TEMP_SUFFIX: &str = ".qc-tmp";

fn temp_prefix(path: &Path) -> String {
    format!(".{}.", path.file_name().unwrap_or_default().to_string_lossy())
}
