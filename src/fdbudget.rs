//! The file-descriptor budget, settled at start: the soft `RLIMIT_NOFILE` raised to the
//! hard one, what the process itself needs (listeners, admin socket, state and audit
//! files, NATS, each queue's segment and readers) set aside, and webhook connections
//! capped to what is left, so a flood of connections cannot take the fds a queue or the
//! admin API needs. Accept errors past the budget back off (`accept`).

/// Descriptors the process holds whatever its load: stdio, the runtime's epoll and
/// eventfds, the three listeners, state file, journal, audit log, NATS, delivery clients.
const BASE_FDS: u64 = 64;
/// A queue's segment being written, a reader (delivery or tail), a directory sync.
const FDS_PER_QUEUE: u64 = 3;
/// Queues budgeted beyond those open at start (tenants add queues while it runs).
const QUEUE_HEADROOM: u64 = 32;
/// Metrics scrapes and admin clients (each listener still caps itself at 128).
const SIDE_FDS: u64 = 32;
/// Fewer webhook connections than this is not a service: the start is refused.
const MIN_CONNECTIONS: u64 = 32;

/// What the budget came to, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The soft limit now (raised to the hard one when it could be).
    pub(crate) limit: u64,
    /// The soft limit the process was started with.
    pub(crate) started_with: u64,
    /// Set aside for everything but webhook connections.
    pub(crate) reserved: u64,
    /// Webhook connections allowed: `limits.max_connections`, or less if fds are short.
    pub(crate) connections: usize,
}

/// Why the process cannot start with the fds it has.
#[derive(Debug, thiserror::Error)]
#[error(
    "RLIMIT_NOFILE is {limit} (hard limit {hard}), and this configuration needs {reserved} \
     descriptors for its listeners, files and {queues} queues plus at least {MIN_CONNECTIONS} \
     for webhook connections: raise the limit (systemd LimitNOFILE=, or ulimit -n)"
)]
pub(crate) struct FdBudgetError {
    limit: u64,
    hard: u64,
    reserved: u64,
    queues: u64,
}

/// The limits at start and after raising the soft one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Raised {
    started_with: u64,
    hard: u64,
    limit: u64,
}

/// Raises the soft limit to the hard one (first thing at start, before queues open).
pub(crate) fn raise_soft_limit() -> Raised {
    let (started_with, hard) = limits();
    let limit = raise_to(hard).unwrap_or(started_with);
    Raised {
        started_with,
        hard,
        limit,
    }
}

/// The budget for `open_queues` queues under the raised limit.
pub(crate) fn settle(
    raised: Raised,
    max_connections: usize,
    open_queues: usize,
) -> Result<Budget, FdBudgetError> {
    plan(
        raised.limit,
        raised.started_with,
        raised.hard,
        max_connections,
        open_queues as u64,
    )
}

/// The budget for a soft limit of `limit`.
fn plan(
    limit: u64,
    started_with: u64,
    hard: u64,
    max_connections: usize,
    open_queues: u64,
) -> Result<Budget, FdBudgetError> {
    let queues = open_queues + QUEUE_HEADROOM;
    let reserved = BASE_FDS + SIDE_FDS + FDS_PER_QUEUE * queues;
    let left = limit.saturating_sub(reserved);
    if left < MIN_CONNECTIONS {
        return Err(FdBudgetError {
            limit,
            hard,
            reserved,
            queues,
        });
    }
    Ok(Budget {
        limit,
        started_with,
        reserved,
        connections: max_connections.min(usize::try_from(left).unwrap_or(usize::MAX)),
    })
}

/// The soft and hard `RLIMIT_NOFILE` (`u64::MAX` for unlimited).
fn limits() -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limits into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return (1024, 1024);
    }
    (rl.rlim_cur, rl.rlim_max)
}

/// Sets the soft limit to `hard`; `None` if the kernel refused.
fn raise_to(hard: u64) -> Option<u64> {
    // An unlimited hard limit cannot be a soft one for files: use the kernel's maximum.
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    let rl = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given; it changes this process's limit only.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } == 0).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_get_what_is_left_and_a_short_budget_refuses() {
        let b = plan(1 << 20, 1024, 1 << 20, 10_000, 5).unwrap();
        assert_eq!(b.connections, 10_000, "plenty: max_connections holds");
        let b = plan(256, 256, 256, 10_000, 0).unwrap();
        assert_eq!(b.reserved, 64 + 32 + 3 * 32);
        assert_eq!(b.connections, 256 - b.reserved as usize);
        let e = plan(128, 128, 128, 10_000, 0).unwrap_err().to_string();
        assert!(
            e.contains("RLIMIT_NOFILE is 128") && e.contains("LimitNOFILE"),
            "{e}"
        );
        let e = plan(1024, 1024, 1024, 10_000, 300).unwrap_err().to_string();
        assert!(e.contains("332 queues"), "{e}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let raised = raise_soft_limit();
        settle(raised, 10, 0).unwrap();
        let (soft, hard) = limits();
        assert!(soft == hard || hard == libc::RLIM_INFINITY, "{soft} {hard}");
    }
}
