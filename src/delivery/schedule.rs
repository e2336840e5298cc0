//! Per-conversation order: records wait in their conversation's queue; a conversation is
//! *ready* when it has records and none in flight. Ready conversations are served in the
//! order they became ready (so none starves), at most `concurrency` at once, and a
//! conversation's next record is sent only once its previous one is settled (2xx or
//! dead-lettered). Pure bookkeeping, no I/O.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The queues of the conversations with records not yet settled.
pub struct Scheduler<K, R> {
    waiting: HashMap<K, VecDeque<R>>,
    ready: VecDeque<K>,
    in_flight: usize,
    concurrency: usize,
    pending: usize,
}

impl<K: Hash + Eq + Clone, R: Clone> Scheduler<K, R> {
    /// At most `concurrency` conversations in flight at once.
    pub fn new(concurrency: usize) -> Self {
        Scheduler {
            waiting: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            concurrency: concurrency.max(1),
            pending: 0,
        }
    }

    /// Adds a record at the end of its conversation.
    pub fn push(&mut self, key: K, record: R) {
        self.pending += 1;
        let queue = self.waiting.entry(key.clone()).or_default();
        queue.push_back(record);
        if queue.len() == 1 {
            self.ready.push_back(key);
        }
    }

    /// The next record to send, if a conversation is ready and the bound allows; its
    /// conversation is in flight until `settle`.
    pub fn next(&mut self) -> Option<(K, R)> {
        if self.in_flight >= self.concurrency {
            return None;
        }
        let key = self.ready.pop_front()?;
        let record = self.waiting.get(&key)?.front()?.clone();
        self.in_flight += 1;
        Some((key, record))
    }

    /// The conversation's record in flight is settled: its next record (if any) is ready.
    pub fn settle(&mut self, key: &K) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.pending = self.pending.saturating_sub(1);
        let Some(queue) = self.waiting.get_mut(key) else {
            return;
        };
        queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(key);
        } else {
            self.ready.push_back(key.clone());
        }
    }

    /// Records not yet settled (in flight included).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Conversations with a record in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the model test needs no extra crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// Random pushes and random completion order against a model: per conversation,
    /// records are sent in push order, one at a time; never more than `concurrency` in
    /// flight; every record is eventually sent; a ready conversation is served before one
    /// that became ready after it (no starvation).
    #[test]
    fn order_per_conversation_bound_and_no_starvation() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..50 {
            let concurrency = 1 + (round % 5);
            let mut s: Scheduler<u64, u64> = Scheduler::new(concurrency);
            let mut pushed: HashMap<u64, Vec<u64>> = HashMap::new();
            let mut sent: HashMap<u64, Vec<u64>> = HashMap::new();
            let mut flying: Vec<u64> = Vec::new();
            let mut seq = 0;
            for _ in 0..2_000 {
                match rng.next(3) {
                    0 | 1 => {
                        let conv = rng.next(12);
                        s.push(conv, seq);
                        pushed.entry(conv).or_default().push(seq);
                        seq += 1;
                    }
                    _ if !flying.is_empty() => {
                        let at = rng.next(flying.len() as u64) as usize;
                        s.settle(&flying.swap_remove(at));
                    }
                    _ => {}
                }
                while let Some((conv, rec)) = s.next() {
                    assert!(
                        !flying.contains(&conv),
                        "one record of a conversation at a time"
                    );
                    flying.push(conv);
                    sent.entry(conv).or_default().push(rec);
                }
                assert!(flying.len() <= concurrency);
                assert_eq!(s.in_flight(), flying.len());
            }
            while !flying.is_empty() {
                s.settle(&flying.pop().unwrap());
                while let Some((conv, rec)) = s.next() {
                    flying.push(conv);
                    sent.entry(conv).or_default().push(rec);
                }
            }
            assert_eq!(sent, pushed, "everything sent, in order per conversation");
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn ready_conversations_are_served_in_turn() {
        let mut s: Scheduler<&str, u32> = Scheduler::new(1);
        s.push("a", 1);
        s.push("a", 2);
        s.push("b", 3);
        assert_eq!(s.next(), Some(("a", 1)));
        assert_eq!(s.next(), None, "bound of 1");
        s.settle(&"a");
        assert_eq!(s.next(), Some(("b", 3)), "b waited longer than a's next");
        s.settle(&"b");
        assert_eq!(s.next(), Some(("a", 2)));
    }
}
