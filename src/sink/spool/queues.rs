//! Which queues a spool directory holds: `<dir>/<org>/<queue>/` since queues belong to an
//! org; resolving a plain `QUEUE` named on the command line to the one org that has it;
//! and moving a spool from before (`<dir>/<queue>/`) into its org's directory at start.

use super::segments::{io_at, list_segments, SpoolError};
use std::path::Path;

/// Why a queue name does not name one queue of the spool.
#[derive(Debug, thiserror::Error)]
pub enum QueueNameError {
    #[error("no org of {dir} has a queue {name:?}; name it ORG/QUEUE")]
    Unknown { dir: String, name: String },
    #[error("queue {name:?} is ambiguous: {}; name it ORG/QUEUE", candidates.join(", "))]
    Ambiguous {
        name: String,
        candidates: Vec<String>,
    },
}

/// Whether `path` is a queue directory itself: it holds segment files.
fn holds_segments(path: &Path) -> bool {
    path.is_dir() && list_segments(path).is_ok_and(|s| !s.is_empty())
}

/// The names of the sub-directories of `dir` (none if it cannot be read).
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The queue `name` names in `dir`: `ORG/QUEUE` as given; a plain name that is a spool of
/// its own (a dead-letter spool, or a spool from before orgs); else the one org that has a
/// queue of that name.
pub fn resolve(dir: &Path, name: &str) -> Result<String, QueueNameError> {
    if name.contains('/') || holds_segments(&dir.join(name)) {
        return Ok(name.to_string());
    }
    let candidates: Vec<String> = subdirs(dir)
        .into_iter()
        .filter(|org| dir.join(org).join(name).is_dir())
        .map(|org| format!("{org}/{name}"))
        .collect();
    match candidates.len() {
        1 => Ok(candidates.into_iter().next().expect("one")),
        0 => Err(QueueNameError::Unknown {
            dir: dir.display().to_string(),
            name: name.to_string(),
        }),
        _ => Err(QueueNameError::Ambiguous {
            name: name.to_string(),
            candidates,
        }),
    }
}

/// Every queue of the spool, as `ORG/QUEUE`.
pub fn list(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for org in subdirs(dir) {
        if holds_segments(&dir.join(&org)) {
            continue; // a spool from before orgs, not an org
        }
        for queue in subdirs(&dir.join(&org)) {
            out.push(format!("{org}/{queue}"));
        }
    }
    out
}

/// The queue directories of `dir` from before queues belonged to orgs (`<dir>/<queue>/`).
pub fn legacy(dir: &Path) -> Vec<String> {
    subdirs(dir)
        .into_iter()
        .filter(|q| holds_segments(&dir.join(q)))
        .collect()
}

/// Why a spool from before orgs could not be moved into its org's directory.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "{path} is a spool from before queues belonged to orgs, and {why}: move it to \
         {dir}/<ORG>/{queue}/ for the org whose numbers use queue {queue:?} \
         (mkdir -p {dir}/<ORG> && mv {path} {dir}/<ORG>/), or remove it once it is consumed"
    )]
    Undecided {
        path: String,
        dir: String,
        queue: String,
        why: String,
    },
    #[error("{0}")]
    Io(#[from] SpoolError),
}

/// Moves each spool from before orgs into the directory of the one org whose numbers route
/// to its queue; `orgs_of(queue)` names those orgs. Returns the moves made.
pub fn migrate_legacy(
    dir: &Path,
    orgs_of: impl Fn(&str) -> Vec<String>,
) -> Result<Vec<(String, String)>, MigrateError> {
    let mut moved = Vec::new();
    for queue in legacy(dir) {
        let from = dir.join(&queue);
        let undecided = |why: String| MigrateError::Undecided {
            path: from.display().to_string(),
            dir: dir.display().to_string(),
            queue: queue.clone(),
            why,
        };
        let orgs = orgs_of(&queue);
        let org = match orgs.as_slice() {
            [org] => org,
            [] => return Err(undecided("no org's numbers use that queue now".into())),
            many => {
                return Err(undecided(format!(
                    "the orgs {} all use that queue",
                    many.join(", ")
                )))
            }
        };
        let to = dir.join(org).join(&queue);
        if to.exists() {
            return Err(undecided(format!("{} exists already", to.display())));
        }
        std::fs::create_dir_all(dir.join(org)).map_err(io_at(&dir.join(org)))?;
        std::fs::rename(&from, &to).map_err(io_at(&from))?;
        crate::fsutil::sync_dir(dir).map_err(io_at(dir))?;
        crate::fsutil::sync_dir(&dir.join(org)).map_err(io_at(&dir.join(org)))?;
        moved.push((queue.clone(), format!("{org}/{queue}")));
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_dir(dir: &Path, name: &str) {
        let q = dir.join(name);
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join(format!("{:020}.log", 0)), b"").unwrap();
    }

    #[test]
    fn plain_names_resolve_to_the_one_org_that_has_them() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        queue_dir(d, "org-a/support");
        queue_dir(d, "org-b/support");
        queue_dir(d, "org-a/billing");
        queue_dir(d, "int-0001");
        assert_eq!(resolve(d, "billing").unwrap(), "org-a/billing");
        assert_eq!(resolve(d, "org-b/support").unwrap(), "org-b/support");
        assert_eq!(resolve(d, "int-0001").unwrap(), "int-0001", "a flat spool");
        let e = resolve(d, "support").unwrap_err().to_string();
        assert!(e.contains("org-a/support, org-b/support"), "{e}");
        assert!(matches!(
            resolve(d, "nope"),
            Err(QueueNameError::Unknown { .. })
        ));
        assert_eq!(list(d), ["org-a/billing", "org-a/support", "org-b/support"]);
    }

    #[test]
    fn spools_from_before_orgs_move_to_their_org_or_refuse_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        queue_dir(d, "support");
        queue_dir(d, "shared");
        queue_dir(d, "org-a/billing");
        assert_eq!(legacy(d), ["shared", "support"]);
        let orgs = |q: &str| match q {
            "support" => vec!["org-a".to_string()],
            _ => vec!["org-a".to_string(), "org-b".to_string()],
        };
        let e = migrate_legacy(d, orgs).unwrap_err().to_string();
        assert!(e.contains("shared") && e.contains("org-a, org-b"), "{e}");
        std::fs::remove_dir_all(d.join("shared")).unwrap();
        let moved = migrate_legacy(d, orgs).unwrap();
        assert_eq!(
            moved,
            [("support".to_string(), "org-a/support".to_string())]
        );
        assert!(d
            .join("org-a/support")
            .join(format!("{:020}.log", 0))
            .exists());
        assert!(legacy(d).is_empty());
    }
}
