//! The store's tests over the file storage: changes, external edits, the journal.

use super::*;
use crate::inventory::BuildError;
use crate::model::crypto::{Sealed, Secret};
use crate::model::state::Integration;
use std::sync::atomic::{AtomicUsize, Ordering};

fn key() -> Arc<MasterKey> {
    Arc::new(crate::fixtures::master_key())
}

fn integration(id: &str, token: Sealed) -> Integration {
    Integration {
        auth_token: token,
        ..crate::fixtures::integration(id, "org-a")
    }
}

/// What a publisher refusing a state answers.
fn refused() -> BuildError {
    BuildError::Queue {
        queue: "q".into(),
        source: crate::sink::SinkError::Unavailable("no".into()),
    }
}

/// A publisher that records committed versions and can be told to refuse.
fn recording(refuse: Arc<AtomicUsize>, live: Arc<Mutex<Vec<u64>>>) -> Publisher {
    Arc::new(move |s: &State| {
        if refuse.load(Ordering::SeqCst) > 0 {
            return Err(refused());
        }
        let v = s.version;
        let live = Arc::clone(&live);
        Ok(Box::new(move || live.lock().unwrap().push(v)) as Box<dyn FnOnce() + Send>)
    })
}

#[test]
fn apply_saves_publishes_and_bumps_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let live = Arc::new(Mutex::new(Vec::new()));
    let refuse = Arc::new(AtomicUsize::new(0));
    let k = key();
    let store = ControlStore::open(
        &path,
        Arc::clone(&k),
        recording(refuse.clone(), live.clone()),
    )
    .unwrap();
    assert_eq!(*live.lock().unwrap(), vec![0]);
    add_integration(&store, &k);
    assert_eq!(*live.lock().unwrap(), vec![0, 1]);
    assert_eq!(State::load(&path).unwrap(), store.snapshot());
    assert_eq!(store.snapshot().version, 1);

    // Refused by the publisher: file, memory and data plane unchanged.
    let before = std::fs::read(&path).unwrap();
    refuse.store(1, Ordering::SeqCst);
    let err = store
        .apply(|s| -> Result<_, ChangeError> {
            s.integrations.clear();
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, ChangeError::Refused(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(store.snapshot().integrations.len(), 1);
    assert_eq!(*live.lock().unwrap(), vec![0, 1]);

    // Invalid result: refused before the publisher sees it.
    refuse.store(0, Ordering::SeqCst);
    let err = store
        .apply(|s| -> Result<_, ChangeError> {
            let dup = s.integrations[0].clone();
            s.integrations.push(dup);
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, ChangeError::Invalid(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(*live.lock().unwrap(), vec![0, 1]);
}

/// Adds integration `int-1` (token sealed under `k`) through `apply`; the version it made.
fn add_integration(store: &ControlStore, k: &MasterKey) -> u64 {
    let sealed = k.seal(&Secret::new("tok"), "int-1").unwrap();
    store
        .apply(|s| -> Result<_, ChangeError> {
            s.integrations.push(integration("int-1", sealed.clone()));
            Ok(())
        })
        .unwrap()
        .version
}

fn number(sender_id: &str) -> crate::model::state::Number {
    crate::fixtures::number(sender_id)
}

#[test]
fn an_edit_written_in_place_after_a_change_is_still_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let k = key();
    let store = ControlStore::open(
        &path,
        Arc::clone(&k),
        recording(Arc::default(), Arc::default()),
    )
    .unwrap();
    add_integration(&store, &k);
    // The change recorded the file's stamp, so looking again reads nothing...
    assert!(store.sync_with_file().is_none());
    // ...but an editor writing into the same inode moves its mtime, and is seen.
    std::thread::sleep(Duration::from_millis(30));
    let mut edited = store.snapshot();
    edited.integrations[0].name = "renamed in place".into();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &edited.encode()).unwrap();
    drop(f);
    assert!(store.sync_with_file().unwrap().is_ok());
    assert_eq!(store.snapshot().integrations[0].name, "renamed in place");
    assert!(store.sync_with_file().is_none(), "judged once");
}

#[test]
fn own_writes_are_not_reloaded_and_external_edits_are_judged_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let live = Arc::new(Mutex::new(Vec::new()));
    let k = key();
    let store = ControlStore::open(
        &path,
        Arc::clone(&k),
        recording(Arc::default(), live.clone()),
    )
    .unwrap();
    assert!(store.sync_with_file().is_none(), "no file, nothing known");
    assert_eq!(add_integration(&store, &k), 1);
    assert!(store.sync_with_file().is_none(), "the store's own write");

    // A valid edit that did not bump the version still becomes the next one.
    let mut edited = store.snapshot();
    edited.numbers.insert(number("+14155550100"));
    edited.save(&path).unwrap();
    assert_eq!(store.sync_with_file().unwrap().unwrap(), 2);
    assert_eq!(store.snapshot().numbers.len(), 1);
    assert_eq!(*live.lock().unwrap(), vec![0, 1, 2]);
    assert!(store.sync_with_file().is_none());

    // A broken edit is rejected once; the previous state keeps serving.
    std::fs::write(&path, b"{ broken").unwrap();
    let err = store.sync_with_file().unwrap().unwrap_err();
    assert_eq!(err.code(), "parse_error");
    assert!(store.sync_with_file().is_none(), "reported once");
    assert_eq!(store.snapshot().version, 2);
    assert_eq!(*live.lock().unwrap(), vec![0, 1, 2]);

    // A removed file is never taken for an empty state.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        store.sync_with_file().unwrap().unwrap_err().code(),
        "file_missing"
    );
    assert_eq!(store.snapshot().numbers.len(), 1);

    // An admin change after a rejected edit works and writes a valid file again.
    store
        .apply(|s| -> Result<_, ChangeError> {
            s.integrations[0].name = "renamed".into();
            Ok(())
        })
        .unwrap();
    assert_eq!(State::load(&path).unwrap(), store.snapshot());
    assert_eq!(store.snapshot().version, 3);
}

#[test]
fn apply_adopts_an_edit_the_watcher_has_not_seen_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let k = key();
    let live = Arc::new(Mutex::new(Vec::new()));
    let store = ControlStore::open(
        &path,
        Arc::clone(&k),
        recording(Arc::default(), live.clone()),
    )
    .unwrap();
    let sealed = k.seal(&Secret::new("tok"), "int-1").unwrap();
    let mut edited = State::default();
    edited.integrations.push(integration("int-1", sealed));
    edited.numbers.insert(number("+14155550100"));
    edited.save(&path).unwrap();
    store
        .apply(|s| -> Result<_, ChangeError> {
            s.numbers.insert(number("+14155550101"));
            Ok(())
        })
        .unwrap();
    let state = store.snapshot();
    assert_eq!((state.version, state.numbers.len()), (2, 2));
    assert_eq!(*live.lock().unwrap(), vec![0, 1, 2]);
    assert_eq!(State::load(&path).unwrap(), state);
}

#[test]
fn small_changes_are_journaled_replayed_and_folded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let jpath = file::journal::path_for(&path);
    let k = key();
    let live = Arc::new(Mutex::new(Vec::new()));
    let open = || {
        ControlStore::open(
            &path,
            Arc::clone(&k),
            recording(Arc::default(), live.clone()),
        )
        .unwrap()
        .with_journal_from(1)
    };
    let store = open();
    add_integration(&store, &k);
    assert!(
        !jpath.exists(),
        "below the threshold the file is written whole"
    );
    store
        .apply(|s| -> Result<_, ChangeError> {
            s.numbers.insert(number("+14155550100"));
            Ok(())
        })
        .unwrap();
    let file_before = std::fs::read(&path).unwrap();

    // Integration-only changes: journaled, served, the file untouched.
    for name in ["second", "third"] {
        store
            .apply(|s| -> Result<_, ChangeError> {
                s.integrations[0].name = name.into();
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), file_before);
    assert_eq!(*live.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert!(
        store.sync_with_file().is_none(),
        "the journal is not an edit"
    );
    let serving = store.snapshot();
    assert_eq!(
        (serving.version, serving.integrations[0].name.as_str()),
        (4, "third")
    );

    // A restart replays the journal on the file.
    drop(store);
    let store = open();
    assert_eq!(store.snapshot(), serving);

    // An edit of the file while changes are journaled would drop them: refused, kept
    // aside, and the file put back at once with the journaled changes in it.
    let mut edited = State::load(&path).unwrap();
    edited.integrations[0].notes = "edited".into();
    edited.save(&path).unwrap();
    let err = store.sync_with_file().unwrap().unwrap_err();
    assert_eq!(err.code(), "journal_pending");
    assert_eq!(store.snapshot(), serving);
    assert_eq!(State::load(&path).unwrap(), serving, "put back");
    assert_eq!(std::fs::metadata(&jpath).unwrap().len(), 0);
    let kept: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".rejected."))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        State::load(&kept[0].path()).unwrap().integrations[0].notes,
        "edited"
    );
    assert!(
        !store.fold_journal_if_idle(Duration::ZERO).unwrap(),
        "nothing left to fold"
    );
    assert!(
        store.sync_with_file().is_none(),
        "the put-back file is the store's own write"
    );

    // With the journal empty, edits are judged as before.
    edited = State::load(&path).unwrap();
    edited.integrations[0].notes = "edited".into();
    edited.save(&path).unwrap();
    assert_eq!(store.sync_with_file().unwrap().unwrap(), 5);

    // A few numbers changed: journaled too, and replayed in order after a restart.
    let file_before = std::fs::read(&path).unwrap();
    store
        .apply(|s| -> Result<_, ChangeError> {
            s.integrations[0].name = "fourth".into();
            s.numbers.insert(number("+14155550101"));
            s.numbers.insert(number("+14155550102"));
            Ok(())
        })
        .unwrap();
    store
        .apply(|s| -> Result<_, ChangeError> {
            s.numbers.remove("+14155550101");
            let first = s.numbers.get("+14155550100").unwrap().clone();
            s.numbers.insert(crate::model::state::Number {
                queue: "moved".into(),
                ..first
            });
            Ok(())
        })
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), file_before);
    let serving = store.snapshot();
    drop(store);
    let store = open();
    assert_eq!(store.snapshot(), serving);
    let numbers: Vec<_> = serving
        .numbers
        .sorted()
        .iter()
        .map(|n| &n.sender_id[..])
        .collect();
    assert_eq!(numbers, ["+14155550100", "+14155550102"]);

    // A bulk change is written whole, and empties the journal.
    store
        .apply(|s| -> Result<_, ChangeError> {
            for i in 0..=file::JOURNAL_MAX_NUMBERS {
                s.numbers.insert(number(&format!("+1415600{i:04}")));
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(std::fs::metadata(&jpath).unwrap().len(), 0);
    assert_eq!(State::load(&path).unwrap(), store.snapshot());
    assert_eq!(store.snapshot().integrations[0].name, "fourth");
}

#[test]
fn reservations_exclude_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let publisher: Publisher = Arc::new(|_| Ok(Box::new(|| {}) as Box<dyn FnOnce() + Send>));
    let store = ControlStore::open(dir.path().join("s.json"), key(), publisher).unwrap();
    let r = store.reserve("+15550001").unwrap();
    assert_eq!(r.sender_id(), "+15550001");
    assert!(store.reserve("+15550001").is_none());
    assert!(store.in_flight().contains("+15550001"));
    drop(r);
    assert!(store.in_flight().is_empty());
    assert!(store.reserve("+15550001").is_some());
}

#[test]
fn open_fails_when_publisher_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let publisher: Publisher = Arc::new(|_| Err(refused()));
    let err = ControlStore::open(dir.path().join("s.json"), key(), publisher).unwrap_err();
    assert!(matches!(err, StoreError::Publish(_)));
}
