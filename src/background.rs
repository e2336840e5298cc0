//! Background threads and their CPU priority. Control-plane work (validating, building
//! and writing a change of a million numbers, dropping a replaced snapshot) runs at a
//! lower priority so it yields the cores to the webhooks; sink workers must not inherit
//! that priority, since every batch's `fdatasync` waits on them. On Linux `nice` changes
//! the calling thread only, and a new thread inherits its creator's value. What such work
//! freed in bulk is handed back to the OS at once (`release_freed_memory`).

use std::sync::mpsc;
use std::sync::Mutex;

/// How much nicer than the webhooks background work runs.
pub(crate) const NICENESS: libc::c_int = 10;

/// Hands the memory a large load or write just freed back to the OS now. The allocator
/// (mimalloc, the binary's) otherwise returns it only as it next gets busy on this
/// thread, so an idle server that loaded a million numbers would keep twice their size
/// resident. Frees nothing that is in use.
pub(crate) fn release_freed_memory() {
    // SAFETY: mi_collect takes a flag and only returns free pages of mimalloc's own heaps
    // (none if mimalloc is not the allocator, as in tests).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Raises this thread's nice value by `NICENESS`; failure leaves it as it was.
fn lower_this_threads_priority() {
    // SAFETY: `nice` takes an integer and touches only the calling thread's priority.
    unsafe {
        libc::nice(NICENESS);
    }
}

/// Runs `work` on a short-lived thread at a lower priority and waits for its result. If
/// no thread can be started, it runs here at this thread's priority.
pub(crate) fn run_nicer<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> T {
    let mut work = Some(work);
    std::thread::scope(|scope| {
        let slot = &mut work;
        let spawned =
            std::thread::Builder::new()
                .name(name.into())
                .spawn_scoped(scope, move || {
                    lower_this_threads_priority();
                    (slot.take().expect("taken once"))()
                });
        match spawned {
            Ok(handle) => Some(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            ),
            Err(_) => None,
        }
    })
    .unwrap_or_else(|| (work.take().expect("not run"))())
}

/// Starts `work` on a detached thread at a lower priority; `Err` if no thread can be started.
pub(crate) fn spawn_nicer(name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_this_threads_priority();
            work()
        })
        .map(drop)
}

/// A thread start request: name, body, and where to say whether it started.
type SpawnRequest = (
    String,
    Box<dyn FnOnce() + Send>,
    mpsc::Sender<std::io::Result<()>>,
);

/// Starts threads at the priority of whoever created the spawner, from whatever thread
/// asks: a queue opened by a (nicer) control-plane change still gets a worker that syncs
/// at the webhooks' priority.
pub(crate) struct Spawner {
    tx: Mutex<mpsc::Sender<SpawnRequest>>,
}

impl Spawner {
    /// The spawning thread, at the caller's priority; it ends when the spawner is dropped.
    pub(crate) fn start(name: &str) -> Spawner {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for (name, body, reply) in rx {
                    let result = std::thread::Builder::new().name(name).spawn(body);
                    let _ = reply.send(result.map(drop));
                }
            });
        if let Err(e) = started {
            // `spawn` then reports the same error for every request.
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Spawner { tx: Mutex::new(tx) }
    }

    /// Starts `body` on a new thread named `name`, as a child of the spawning thread.
    pub(crate) fn spawn(
        &self,
        name: String,
        body: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<()> {
        let (reply, answer) = mpsc::channel();
        let gone = || std::io::Error::other("the spawner thread is not running");
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((name, body, reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> libc::c_int {
        // SAFETY: getpriority only reads the calling thread's nice value.
        unsafe {
            libc::getpriority(
                libc::PRIO_PROCESS,
                libc::syscall(libc::SYS_gettid) as libc::id_t,
            )
        }
    }

    #[test]
    fn work_runs_at_lower_priority_and_returns_its_result() {
        let before = nice_of_this_thread();
        let (value, nice) = run_nicer("nicer-test", || (41 + 1, nice_of_this_thread()));
        assert_eq!(value, 42);
        assert_eq!(nice, (before + NICENESS).min(19), "the work thread yields");
        assert_eq!(
            nice_of_this_thread(),
            before,
            "the caller keeps its priority"
        );
    }
}
