//! Pacing: closed loop (each connection sends its next request when the last one is
//! answered) and open loop (request i is due at `start + i / rate`, whichever connection
//! is free takes it, and its latency is measured from that intended time, so a slow
//! server's queueing delay is counted, not hidden: no coordinated omission).

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::{Duration, Instant};

/// Highest latency the histograms track, in microseconds (60 s).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// When each request of an open-loop run is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    /// Requests at `rate` per second from `start`.
    pub fn new(start: Instant, rate: f64) -> Schedule {
        assert!(rate > 0.0, "rate must be positive");
        Schedule { start, rate }
    }

    /// The intended send time of request `i`.
    pub fn intended(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests fall due before `end`.
    pub fn due_before(&self, end: Instant) -> u64 {
        let secs = end.saturating_duration_since(self.start).as_secs_f64();
        (secs * self.rate).ceil() as u64
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// As fast as the connections go.
    Closed,
    /// At a fixed rate, latency from the intended time.
    Open(Schedule),
}

/// How a run is paced and when it ends; shared by every connection of the run.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Closed or open loop.
    pub mode: Mode,
    /// No request starts (closed) or falls due (open) at or after this.
    pub end: Instant,
    /// An open-loop run that is this far behind stops sending (the rest count as unsent).
    pub give_up: Instant,
    /// At most this many requests in all, if set.
    pub limit: Option<u64>,
    /// Request numbers handed out so far (the open-loop ticket).
    pub counter: Arc<AtomicU64>,
}

/// Live totals for the once-a-second progress line.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests answered (any status).
    pub answered: AtomicU64,
    /// Requests answered 200.
    pub ok: AtomicU64,
    /// Requests that got no answer (connection or protocol error).
    pub errors: AtomicU64,
}

/// One connection's measurements, merged at the end of the run.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of answered requests, microseconds.
    pub latency_us: Histogram<u64>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer.
    pub errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
            statuses: BTreeMap::new(),
            errors: 0,
        }
    }
}

impl Recorder {
    /// Records one answer (or its absence) and its latency.
    pub fn record(&mut self, outcome: Result<u16, String>, latency: Duration, live: &Live) {
        match outcome {
            Ok(status) => {
                let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
                self.latency_us.saturating_record(us);
                *self.statuses.entry(status).or_default() += 1;
                live.answered.fetch_add(1, Ordering::Relaxed);
                if status == 200 {
                    live.ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.errors += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds another connection's measurements.
    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.errors += other.errors;
    }

    /// Requests that got an answer or an error.
    pub fn attempted(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }
}

/// One request/answer on a connection: the status code, or why there was none.
pub trait Exchange {
    /// Sends the next request and waits for the whole answer.
    fn exchange(&mut self) -> impl Future<Output = Result<u16, String>> + Send;
}

/// The time request `i` counts from, after waiting for it if it is not due yet; `None` ends the loop.
async fn start_of(pace: &Pace, i: u64) -> Option<Instant> {
    if pace.limit.is_some_and(|limit| i >= limit) {
        return None;
    }
    match pace.mode {
        Mode::Closed => {
            let now = Instant::now();
            (now < pace.end).then_some(now)
        }
        Mode::Open(schedule) => {
            let due = schedule.intended(i);
            if due >= pace.end || Instant::now() >= pace.give_up {
                return None;
            }
            tokio::time::sleep_until(due).await;
            Some(due)
        }
    }
}

/// Drives one connection until the run ends, recording each answer's latency.
pub async fn drive<E: Exchange>(ex: &mut E, pace: &Pace, rec: &mut Recorder, live: &Live) {
    loop {
        let i = pace.counter.fetch_add(1, Ordering::Relaxed);
        let Some(start) = start_of(pace, i).await else {
            return;
        };
        let outcome = ex.exchange().await;
        rec.record(outcome, Instant::now() - start, live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers 200 after a fixed service time, one request at a time.
    struct Fixed(Duration);

    impl Exchange for Fixed {
        async fn exchange(&mut self) -> Result<u16, String> {
            tokio::time::sleep(self.0).await;
            Ok(200)
        }
    }

    fn pace(mode: Mode, start: Instant, run: Duration, grace: Duration) -> Pace {
        Pace {
            mode,
            end: start + run,
            give_up: start + run + grace,
            limit: None,
            counter: Arc::default(),
        }
    }

    #[test]
    fn intended_times_follow_the_rate() {
        let start = Instant::now();
        let s = Schedule::new(start, 400.0);
        assert_eq!(s.intended(0), start);
        assert_eq!(s.intended(1), start + Duration::from_micros(2500));
        assert_eq!(s.intended(400), start + Duration::from_secs(1));
        assert_eq!(s.due_before(start + Duration::from_secs(2)), 800);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_queueing_delay() {
        // 1,000/s offered to one connection whose server needs 5 ms: request i is due at
        // i ms but can only start at 5i ms, so its latency is 4i + 5 ms, not 5 ms.
        let start = Instant::now();
        let p = pace(
            Mode::Open(Schedule::new(start, 1000.0)),
            start,
            Duration::from_millis(50),
            Duration::from_millis(100),
        );
        let (mut rec, live) = (Recorder::default(), Live::default());
        drive(&mut Fixed(Duration::from_millis(5)), &p, &mut rec, &live).await;
        let h = &rec.latency_us;
        // It gives up at 150 ms, when request 30 would start: 30 sent, 20 of 50 unsent.
        assert_eq!(h.len(), 30);
        assert!(h.equivalent(h.min(), 5000), "min {}", h.min());
        assert!(
            h.equivalent(h.max(), 4 * 29 * 1000 + 5000),
            "max {}",
            h.max()
        );
        assert_eq!(live.ok.load(Ordering::Relaxed), 30);
        assert_eq!(
            Schedule::new(start, 1000.0).due_before(p.end) - rec.attempted(),
            20,
            "unsent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_rate_when_the_server_keeps_up() {
        let start = Instant::now();
        let p = pace(
            Mode::Open(Schedule::new(start, 1000.0)),
            start,
            Duration::from_millis(100),
            Duration::from_secs(1),
        );
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let (mut rec, live) = (Recorder::default(), Live::default());
                drive(&mut Fixed(Duration::from_millis(1)), &p, &mut rec, &live).await;
                rec
            }));
        }
        let mut all = Recorder::default();
        for t in tasks {
            all.merge(&t.await.unwrap());
        }
        assert_eq!(all.attempted(), 100);
        let max = all.latency_us.max();
        assert!(
            all.latency_us.equivalent(max, 1000),
            "two connections keep up, no queueing: {max}"
        );
        assert!(Instant::now() - start < Duration::from_millis(102));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_measures_from_the_actual_send() {
        let start = Instant::now();
        let mut p = pace(
            Mode::Closed,
            start,
            Duration::from_millis(50),
            Duration::ZERO,
        );
        let (mut rec, live) = (Recorder::default(), Live::default());
        drive(&mut Fixed(Duration::from_millis(5)), &p, &mut rec, &live).await;
        assert_eq!(rec.attempted(), 10);
        assert!(rec.latency_us.equivalent(rec.latency_us.max(), 5000));
        p.limit = Some(7);
        p.end = Instant::now() + Duration::from_secs(10);
        p.counter = Arc::default();
        let mut rec = Recorder::default();
        drive(&mut Fixed(Duration::from_millis(5)), &p, &mut rec, &live).await;
        assert_eq!(
            rec.attempted(),
            7,
            "a request limit ends the run before its time"
        );
    }

    #[test]
    fn recorder_counts_statuses_and_errors() {
        let live = Live::default();
        let mut a = Recorder::default();
        a.record(Ok(200), Duration::from_millis(2), &live);
        a.record(Ok(403), Duration::from_millis(1), &live);
        let mut b = Recorder::default();
        b.record(Err("reset".into()), Duration::from_millis(1), &live);
        b.record(Ok(200), Duration::from_secs(120), &live);
        a.merge(&b);
        assert_eq!(a.statuses, BTreeMap::from([(200, 2), (403, 1)]));
        assert_eq!((a.errors, a.attempted()), (1, 4));
        assert!(a.latency_us.equivalent(a.latency_us.max(), MAX_LATENCY_US));
        assert_eq!(live.errors.load(Ordering::Relaxed), 1);
        assert_eq!(live.ok.load(Ordering::Relaxed), 2);
    }
}
