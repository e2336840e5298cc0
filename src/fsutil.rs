//! File-system steps that make a write durable: the one atomic replace (temp file, fsync,
//! rename, fsync of the directory) and the directory sync that makes a created or removed
//! entry survive a power cut. The state file, the journal's compaction and the replay
//! cursors all write through here.

use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::path::Path;

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` atomically, so a reader (or a watcher) never sees half a
/// file and a crash leaves either the old or the new content. Returns the written file's
/// metadata, taken before the rename (which keeps the inode).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<Metadata> {
    let staged = stage(path, bytes, "tmp")?;
    staged.put_in_place()
}

/// A file written and synced beside its destination, not yet in place: the slow half of
/// `write_atomic`, which a writer can do without holding what guards the destination.
pub(crate) struct Staged {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    meta: Metadata,
}

/// Writes `bytes` to a temporary file beside `path` (named with `tag`, so two writers of
/// one process never share it) and syncs it.
pub(crate) fn stage(path: &Path, bytes: &[u8], tag: &str) -> io::Result<Staged> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{tag}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let meta = {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        f.metadata()?
    };
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
        meta,
    })
}

impl Staged {
    /// Renames the file into place and syncs the directory; returns its metadata.
    pub(crate) fn put_in_place(self) -> io::Result<Metadata> {
        std::fs::rename(&self.tmp, &self.path)?;
        sync_dir(parent_of(&self.path))?;
        Ok(self.meta)
    }

    /// Removes the file unused (its content is stale).
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Makes a created, renamed or removed entry of `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.json");
        write_atomic(&path, b"one").unwrap();
        let meta = write_atomic(&path, b"two!").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two!");
        assert_eq!(meta.len(), 4);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.json"]);
    }
}
