//! The operator's side of delivery: `sms-ingress delivery status` (per route and queue: the
//! cursor, the records and seconds it lags, what is in flight, its dead letters, its last
//! error) and `sms-ingress delivery replay --route R` (each dead letter delivered again,
//! at most once per replay: a replay cursor beside them records the ones delivered).

use super::route::Route;
use super::status::{QueueStats, StatusFile};
use super::{open_route, DeliveryError, DEAD_LETTERS};
use crate::config::{Config, QueueSelector, RouteConfig, SinkKind};
use crate::cursor::{Cursor, CursorError};
use crate::sink::spool::feed::Record;
use crate::sink::spool::{SpoolError, SpoolReader};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a status or replay could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("no route {0:?} in delivery.routes")]
    NoRoute(String),
    #[error(transparent)]
    Route(#[from] DeliveryError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

/// One queue of a route, counted from the files.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub queue: String,
    pub cursor: u64,
    /// Records durable in the spool and not yet delivered.
    pub lag_records: u64,
    /// Age of the oldest of them.
    pub lag_seconds: f64,
    /// Conversations in flight when the server last reported (its status file).
    pub in_flight: u64,
}

/// One route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub route: String,
    pub url: String,
    pub queues: Vec<QueueReport>,
    /// Dead letters not yet delivered by a replay.
    pub dead_letters: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// When the server last wrote its status (none: it never ran this route).
    pub status_updated_at: Option<String>,
}

/// The replay cursor of a route's dead letters.
fn replay_cursor_path(cfg: &Config, route: &str) -> PathBuf {
    cfg.delivery
        .dir
        .join(route)
        .join(DEAD_LETTERS)
        .join("replay-cursor.json")
}

/// Records of `queue` under `dir` not settled by `cursor`, and the received-at of the first.
fn unsettled(dir: &Path, queue: &str, cursor: &Cursor) -> Result<(u64, Option<i64>), SpoolError> {
    let mut reader = match SpoolReader::open(dir, queue) {
        Ok(r) => r,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok((0, None))
        }
        Err(e) => return Err(e),
    };
    reader.seek(cursor.next);
    let (mut count, mut first) = (0, None);
    while let Some((offset, env)) = reader.next_record()? {
        if cursor.is_done(offset) {
            continue;
        }
        count += 1;
        first.get_or_insert(env.received_at_ms);
    }
    Ok((count, first))
}

/// The `ORG/QUEUE`s a route has cursors for.
fn cursor_queues(route_dir: &Path) -> Vec<String> {
    let cursors = route_dir.join("cursor");
    let mut out = Vec::new();
    for org in std::fs::read_dir(&cursors).into_iter().flatten().flatten() {
        for q in std::fs::read_dir(org.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = q.file_name().to_string_lossy().into_owned();
            if let Some(queue) = name.strip_suffix(".json") {
                out.push(format!("{}/{queue}", org.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

/// The spool's queues the route selects (none with the NATS sink: the stream has them).
fn selected_queues(cfg: &Config, r: &RouteConfig) -> Vec<String> {
    if cfg.sink.kind != SinkKind::Spool {
        return Vec::new();
    }
    // As the server resolves it at start; an ambiguous plain name selects nothing.
    let Ok(Ok(selector)) =
        QueueSelector::parse(&r.queue).map(|s| super::resolved(s, &cfg.sink.dir))
    else {
        return Vec::new();
    };
    crate::sink::spool::queues::list(&cfg.sink.dir)
        .into_iter()
        .filter(|q| selector.selects(q))
        .collect()
}

/// The report of one route, counted from its cursors, the spool and its dead letters.
fn report(cfg: &Config, r: &RouteConfig) -> Result<RouteReport, ToolError> {
    let dir = cfg.delivery.dir.join(&r.name);
    let status: Option<StatusFile> = std::fs::read(dir.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let now_ms = crate::telemetry::unix_now() * 1000.0;
    let mut names: BTreeSet<String> = cursor_queues(&dir).into_iter().collect();
    if let Some(s) = &status {
        names.extend(s.queues.keys().cloned());
    }
    names.extend(selected_queues(cfg, r));
    let mut queues = Vec::new();
    for queue in names {
        let cursor = Cursor::load(&dir.join("cursor").join(format!("{queue}.json")))?;
        let (lag_records, oldest) = unsettled(&cfg.sink.dir, &queue, &cursor)?;
        let live: Option<&QueueStats> = status.as_ref().and_then(|s| s.queues.get(&queue));
        queues.push(QueueReport {
            queue,
            cursor: cursor.next,
            lag_records,
            lag_seconds: oldest.map_or(0.0, |ms| ((now_ms - ms as f64) / 1000.0).max(0.0)),
            in_flight: live.map_or(0, |q| q.in_flight),
        });
    }
    let replayed = Cursor::load(&replay_cursor_path(cfg, &r.name))?;
    let (dead_letters, _) = unsettled(&dir, DEAD_LETTERS, &replayed)?;
    Ok(RouteReport {
        route: r.name.clone(),
        url: r.url.clone(),
        queues,
        dead_letters,
        last_error: status.as_ref().and_then(|s| s.last_error.clone()),
        last_error_at: status.as_ref().and_then(|s| s.last_error_at.clone()),
        status_updated_at: status.map(|s| s.updated_at),
    })
}

/// `delivery status`: every configured route.
pub fn status(cfg: &Config) -> Result<Vec<RouteReport>, ToolError> {
    cfg.delivery.routes.iter().map(|r| report(cfg, r)).collect()
}

/// The same, as an operator reads it.
pub fn render(reports: &[RouteReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no delivery routes configured ([[delivery.routes]])\n");
    }
    for r in reports {
        let _ = writeln!(out, "route {}  → {}", r.route, r.url);
        if r.queues.is_empty() {
            let _ = writeln!(out, "  (no queue of this route holds records yet)");
        }
        for q in &r.queues {
            let _ = writeln!(
                out,
                "  {:<32} cursor {:>12}  lag {:>8} records {:>9.1} s  in flight {}",
                q.queue, q.cursor, q.lag_records, q.lag_seconds, q.in_flight
            );
        }
        let _ = writeln!(
            out,
            "  dead letters: {} (sms-ingress delivery replay --route {})",
            r.dead_letters, r.route
        );
        match (&r.last_error, &r.last_error_at) {
            (Some(e), Some(at)) => {
                let _ = writeln!(out, "  last error: {e} (at {at})");
            }
            _ => {
                let _ = writeln!(out, "  last error: none");
            }
        }
        let _ = writeln!(
            out,
            "  server status written: {}",
            r.status_updated_at.as_deref().unwrap_or("never")
        );
    }
    out
}

/// What one replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub delivered: u64,
    /// Failed `max_attempts` times again: kept for the next replay.
    pub failed: u64,
    pub remaining: u64,
}

/// `delivery replay --route R`: each dead letter not yet replayed is delivered with the
/// route's policy (up to `max_attempts`, at least once); the delivered ones are recorded
/// in the replay cursor (fsynced after each), so none is delivered twice by replays.
pub async fn replay(cfg: &Config, name: &str) -> Result<ReplayReport, ToolError> {
    let r = cfg
        .delivery
        .routes
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ToolError::NoRoute(name.to_string()))?;
    let route = Arc::new(open_route(r, &cfg.delivery.dir, false)?);
    let dir = cfg.delivery.dir.join(&r.name);
    let path = replay_cursor_path(cfg, name);
    let mut cursor = Cursor::load(&path)?;
    let records = pending(&dir, &cursor)?;
    let mut report = ReplayReport::default();
    for record in records {
        let give_up = route.max_attempts.max(1);
        match Route::deliver(&route, &record, give_up).await {
            Ok(()) => {
                cursor.mark(&[(record.offset, record.next_offset)]);
                cursor.save(&path)?;
                report.delivered += 1;
            }
            Err(e) => {
                tracing::warn!(
                    route = name,
                    offset = record.offset,
                    error = e,
                    "replay: not delivered; kept"
                );
                report.failed += 1;
            }
        }
    }
    report.remaining = unsettled(&dir, DEAD_LETTERS, &cursor)?.0;
    Ok(report)
}

/// The dead letters the replay cursor has not settled, in order.
fn pending(dir: &Path, cursor: &Cursor) -> Result<Vec<Record>, SpoolError> {
    let mut reader = match SpoolReader::open(dir, DEAD_LETTERS) {
        Ok(r) => r,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    reader.seek(cursor.next);
    let mut out = Vec::new();
    while let Some((offset, envelope)) = reader.next_record()? {
        if !cursor.is_done(offset) {
            out.push(Record {
                offset,
                next_offset: reader.position(),
                envelope: Arc::new(envelope),
            });
        }
    }
    Ok(out)
}
