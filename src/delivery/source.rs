//! Where a route's records come from, in log order, each exactly once: the queue's spool
//! files while the route is behind (after a restart, an outage, a burst it could not keep
//! up with), then the writer's in-memory feed once it has caught up — no polling, and no
//! gap or duplicate at the switch, because every record is known by its offset. The files
//! are read no further than the durable end: a batch whose sync fails is cut, and its
//! offsets are used again.

use crate::sink::spool::feed::{Feed, Record};
use crate::sink::spool::{SpoolError, SpoolReader};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

/// Records read from the files in one go.
const READ_BATCH: usize = 512;

/// Where the next records are read.
enum Mode {
    /// The files (the reader positioned at `next`, once opened).
    Files(Option<SpoolReader>),
    /// The writer's feed.
    Feed,
}

/// One route's reader of one queue.
pub struct Source {
    dir: PathBuf,
    queue: String,
    /// The offset of the next record to hand out.
    next: u64,
    mode: Mode,
    batches: broadcast::Receiver<Arc<[Record]>>,
    durable: watch::Receiver<u64>,
    /// The feed, to know when its writer closed (the queue was released).
    feed: Arc<Feed>,
}

impl Source {
    /// Starts at `from`: subscribed to the feed first, so nothing written meanwhile is
    /// missed, then reading the files from there.
    pub fn new(dir: PathBuf, queue: String, from: u64, feed: &Arc<Feed>) -> Source {
        Source {
            dir,
            queue,
            next: from,
            mode: Mode::Files(None),
            batches: feed.subscribe(),
            durable: feed.durable_end(),
            feed: feed.clone(),
        }
    }

    /// Bytes durable in the log and not yet handed out (0 while following the feed).
    pub fn unread_bytes(&self) -> u64 {
        match self.mode {
            Mode::Files(_) => self.durable.borrow().saturating_sub(self.next),
            Mode::Feed => 0,
        }
    }

    /// The next records, in log order (waits for them); `None` once the queue's writer
    /// closed and every durable record was handed out.
    pub async fn next(&mut self) -> Result<Option<Vec<Record>>, SpoolError> {
        loop {
            let mode = std::mem::replace(&mut self.mode, Mode::Feed);
            match mode {
                Mode::Files(reader) => {
                    if let Some(records) = self.read_files(reader).await? {
                        return Ok(Some(records));
                    }
                }
                Mode::Feed => match self.follow_feed().await {
                    Followed::Records(records) => return Ok(Some(records)),
                    Followed::Files => {}
                    Followed::End => return Ok(None),
                },
            }
        }
    }

    /// Up to `READ_BATCH` durable records from the files; `None` at the durable end, where
    /// the feed takes over.
    async fn read_files(
        &mut self,
        reader: Option<SpoolReader>,
    ) -> Result<Option<Vec<Record>>, SpoolError> {
        let end = *self.durable.borrow();
        if self.next >= end {
            return Ok(None);
        }
        let (dir, queue, from) = (self.dir.clone(), self.queue.clone(), self.next);
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = match reader {
                Some(r) => r,
                None => {
                    let mut r = SpoolReader::open(&dir, &queue)?;
                    let start = r.start()?;
                    if from < start {
                        // A route added after retention deleted (unconsumed, old) segments.
                        tracing::warn!(
                            queue,
                            from,
                            start,
                            "delivery: records before the first segment are gone; starting there"
                        );
                    }
                    r.seek(from.max(start));
                    r
                }
            };
            let mut out = Vec::new();
            while out.len() < READ_BATCH && reader.position() < end {
                let Some((offset, envelope)) = reader.next_record()? else {
                    break;
                };
                out.push(Record {
                    offset,
                    next_offset: reader.position(),
                    envelope: Arc::new(envelope),
                });
            }
            Ok::<_, SpoolError>((reader, out))
        })
        .await
        .map_err(|e| SpoolError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let (reader, records) = match read {
            Ok(read) => read,
            Err(e) => {
                self.mode = Mode::Files(None);
                return Err(e);
            }
        };
        let Some(last) = records.last() else {
            return Ok(None);
        };
        self.next = last.next_offset;
        self.mode = Mode::Files(Some(reader));
        Ok(Some(records))
    }

    /// The next batch of the feed past `next`; or the files must be read first (the feed
    /// went ahead of what was handed out, or this reader lagged behind it); or the end.
    async fn follow_feed(&mut self) -> Followed {
        loop {
            if self.feed.is_closed() && self.batches.is_empty() {
                if self.next >= *self.durable.borrow_and_update() {
                    return Followed::End;
                }
                // No batch will come: what is left is in the files.
                self.mode = Mode::Files(None);
                return Followed::Files;
            }
            let received = tokio::select! {
                biased;
                received = self.batches.recv() => received,
                // Woken by every publish, and by the writer closing.
                _ = self.durable.changed() => continue,
            };
            match received {
                Ok(batch) => {
                    let records: Vec<Record> = batch
                        .iter()
                        .filter(|r| r.offset >= self.next)
                        .cloned()
                        .collect();
                    let Some(first) = records.first() else {
                        continue; // already read from the files
                    };
                    if first.offset > self.next {
                        self.mode = Mode::Files(None);
                        return Followed::Files;
                    }
                    self.next = records.last().expect("not empty").next_offset;
                    return Followed::Records(records);
                }
                Err(RecvError::Lagged(_)) => {
                    self.mode = Mode::Files(None);
                    return Followed::Files;
                }
                // The feed is held here, so its sender lives: never reached.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

/// What following the feed gave.
enum Followed {
    Records(Vec<Record>),
    /// Read the files first.
    Files,
    /// The writer closed and everything durable was handed out.
    End,
}
