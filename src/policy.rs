//! Tenant policy after verification: short-code compliance keywords and suppression of
//! Twilio's retries of a delivery already made durable.

use crate::envelope::ComplianceAction;
use crate::model::state::Compliance;
use bytes::Bytes;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// TwiML that tells Twilio "no reply".
pub(crate) const EMPTY_TWIML: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

/// A short code's keywords, lower-cased once, with each reply's TwiML prebuilt.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCompliance {
    actions: Vec<(ComplianceAction, Vec<String>, Bytes)>,
}

impl CompiledCompliance {
    /// Prepares the keywords and replies of one number (at snapshot build, not per request).
    pub(crate) fn compile(c: &Compliance) -> CompiledCompliance {
        let parts = [
            (ComplianceAction::Help, &c.help),
            (ComplianceAction::OptOut, &c.opt_out),
            (ComplianceAction::ReOptIn, &c.re_opt_in),
        ];
        let actions = parts
            .into_iter()
            .map(|(action, kr)| {
                let keywords = kr
                    .keywords
                    .iter()
                    .map(|k| k.trim().to_lowercase())
                    .filter(|k| !k.is_empty())
                    .collect();
                (action, keywords, reply_twiml(&kr.message))
            })
            .collect();
        CompiledCompliance { actions }
    }

    /// The action and reply when the whole trimmed body is one keyword (case-insensitive).
    pub(crate) fn matches(&self, body: &str) -> Option<(ComplianceAction, Bytes)> {
        let body = body.trim();
        if body.is_empty() || body.len() > 64 {
            return None;
        }
        let lowered = body.to_lowercase();
        self.actions
            .iter()
            .find(|(_, kws, _)| kws.contains(&lowered))
            .map(|(a, _, reply)| (*a, reply.clone()))
    }
}

/// `<Response><Message>text</Message></Response>` with the text XML-escaped.
pub(crate) fn reply_twiml(message: &str) -> Bytes {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>");
    for c in message.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            c => s.push(c),
        }
    }
    s.push_str("</Message></Response>");
    Bytes::from(s)
}

/// Shards of the dedup map (a power of two, as dashmap requires).
const DEDUP_SHARDS: usize = 64;

/// Deliveries made durable recently, so a Twilio retry is answered 200 without storing it again.
pub(crate) struct Dedup {
    seen: DashMap<Box<str>, Instant, foldhash::fast::RandomState>,
    window: Duration,
    max_entries: usize,
}

impl Dedup {
    /// Remembers deliveries for `window`, at most `max_entries` of them.
    pub(crate) fn new(window: Duration, max_entries: usize) -> Dedup {
        Dedup {
            // Many small shards: a shard's write lock blocks a runtime worker, and growing a
            // shard rehashes it under that lock, so smaller shards mean shorter stalls.
            seen: DashMap::with_hasher_and_shard_amount(
                foldhash::fast::RandomState::default(),
                DEDUP_SHARDS,
            ),
            window,
            max_entries,
        }
    }

    /// True if this key was accepted within the window.
    pub(crate) fn is_duplicate(&self, key: &str) -> bool {
        self.seen
            .get(key)
            .is_some_and(|at| at.elapsed() < self.window)
    }

    /// Records a key once its envelope is durable (taken whole: no copy per webhook).
    pub(crate) fn accepted(&self, key: impl Into<Box<str>>) {
        self.seen.insert(key.into(), Instant::now());
    }

    /// Records a key made durable `age` ago (rebuilt from the spool at start); one older
    /// than the window is not kept.
    pub(crate) fn accepted_ago(&self, key: &str, age: Duration) {
        if age >= self.window {
            return;
        }
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.seen.insert(key.into(), at);
    }

    /// The window a retry counts as a duplicate in.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Forgets expired keys, then the oldest ones while over the bound; run periodically.
    pub(crate) fn sweep(&self) {
        let mut cutoff = self.window;
        self.seen.retain(|_, at| at.elapsed() < cutoff);
        while self.seen.len() > self.max_entries && cutoff > Duration::from_millis(1) {
            cutoff /= 2;
            self.seen.retain(|_, at| at.elapsed() < cutoff);
        }
        metrics::gauge!("sms_ingress_dedup_entries").set(self.seen.len() as f64);
    }

    /// How many keys are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::KeywordReply;

    fn kr(k: &[&str], m: &str) -> KeywordReply {
        KeywordReply {
            keywords: k.iter().map(|s| s.to_string()).collect(),
            message: m.into(),
        }
    }

    #[test]
    fn keywords_match_whole_trimmed_body_case_insensitively() {
        let c = CompiledCompliance::compile(&Compliance {
            help: kr(&["HELP", "info"], "Call us <now> & then"),
            opt_out: kr(&["STOP"], "Bye"),
            re_opt_in: kr(&["START", "ÉCRIRE"], "Hi"),
        });
        let (a, reply) = c.matches("  help \n").unwrap();
        assert_eq!(a, ComplianceAction::Help);
        assert_eq!(
            &reply[..],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>Call us &lt;now&gt; &amp; then</Message></Response>"
        );
        assert_eq!(c.matches("Stop").unwrap().0, ComplianceAction::OptOut);
        assert_eq!(c.matches("écrire").unwrap().0, ComplianceAction::ReOptIn);
        assert!(c.matches("please stop").is_none());
        assert!(c.matches("").is_none());
    }

    #[test]
    fn dedup_window_and_bound() {
        let d = Dedup::new(Duration::from_millis(50), 3);
        assert!(!d.is_duplicate("a"));
        d.accepted("a");
        assert!(d.is_duplicate("a"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!d.is_duplicate("a"));
        d.sweep();
        assert!(d.is_empty());
        for k in ["1", "2", "3", "4", "5"] {
            d.accepted(k);
            std::thread::sleep(Duration::from_millis(5));
        }
        d.sweep();
        assert!(d.len() <= 3);
        assert!(d.is_duplicate("5"));

        // Rebuilt at start: a key made durable inside the window is a duplicate for the
        // rest of it; one older than the window is not kept.
        let d = Dedup::new(Duration::from_millis(200), 10);
        d.accepted_ago("recent", Duration::from_millis(150));
        d.accepted_ago("old", Duration::from_millis(250));
        assert!(d.is_duplicate("recent") && !d.is_duplicate("old"));
        assert_eq!(d.len(), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !d.is_duplicate("recent"),
            "its window ends 200 ms after it was stored"
        );
    }
}
