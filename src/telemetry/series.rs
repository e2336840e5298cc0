//! The recorder behind every `metrics::` call: a series labelled with a `queue` lives in
//! that queue's own registry, the rest in one global registry, so a released queue's
//! series go with it (a tenant that churns queue names cannot grow `/metrics` or memory).
//! A scrape renders the global registry and every open queue's, merged by metric family.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

/// One description, kept to give each new queue registry the HELP lines.
#[derive(Clone)]
enum Description {
    Counter(KeyName, Option<Unit>, SharedString),
    Gauge(KeyName, Option<Unit>, SharedString),
    Histogram(KeyName, Option<Unit>, SharedString),
}

/// The registries of the open queues, by `ORG/QUEUE`.
#[derive(Default)]
struct QueueRegistries {
    by_queue: RwLock<HashMap<String, PrometheusRecorder>>,
    descriptions: RwLock<Vec<Description>>,
}

/// The installed recorder's queue registries, for `forget_queue`.
static QUEUES: OnceLock<Arc<QueueRegistries>> = OnceLock::new();

/// Drops a released queue's series; a no-op when no recorder is installed (unit tests).
pub(crate) fn forget_queue(queue: &str) {
    if let Some(q) = QUEUES.get() {
        q.by_queue
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue);
    }
}

/// The global recorder: routes each series by its `queue` label.
pub(crate) struct Recorders {
    global: PrometheusRecorder,
    queues: Arc<QueueRegistries>,
    /// Builds a queue's registry with the global one's buckets.
    build: fn() -> anyhow::Result<PrometheusBuilder>,
}

/// Renders and maintains every registry; cheap to clone.
#[derive(Clone)]
pub(crate) struct Scrape {
    global: metrics_exporter_prometheus::PrometheusHandle,
    queues: Arc<QueueRegistries>,
}

impl Recorders {
    /// Installs the recorder; `build` gives the bucket settings of every registry.
    pub(crate) fn install(
        build: fn() -> anyhow::Result<PrometheusBuilder>,
    ) -> anyhow::Result<Scrape> {
        let queues = Arc::new(QueueRegistries::default());
        let global = build()?.build_recorder();
        let scrape = Scrape {
            global: global.handle(),
            queues: queues.clone(),
        };
        let _ = QUEUES.set(queues.clone());
        metrics::set_global_recorder(Recorders {
            global,
            queues,
            build,
        })
        .map_err(|_| anyhow::anyhow!("a metrics recorder is installed already"))?;
        Ok(scrape)
    }

    /// The registry of `queue`, made on its first series.
    fn with_queue<T>(&self, queue: &str, f: impl FnOnce(&PrometheusRecorder) -> T) -> T {
        if let Some(r) = self
            .queues
            .by_queue
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
        {
            return f(r);
        }
        let mut all = self
            .queues
            .by_queue
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let r = all.entry(queue.to_string()).or_insert_with(|| {
            let r = (self.build)()
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            for d in self
                .queues
                .descriptions
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
            {
                match d {
                    Description::Counter(k, u, h) => r.describe_counter(k, u, h),
                    Description::Gauge(k, u, h) => r.describe_gauge(k, u, h),
                    Description::Histogram(k, u, h) => r.describe_histogram(k, u, h),
                }
            }
            r
        });
        f(r)
    }

    fn remember(&self, d: Description) {
        self.queues
            .descriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(d);
    }
}

/// The value of the series' `queue` label, if it has one.
fn queue_of(key: &Key) -> Option<&str> {
    key.labels().find(|l| l.key() == "queue").map(|l| l.value())
}

impl Recorder for Recorders {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, help: SharedString) {
        self.remember(Description::Counter(key.clone(), unit, help.clone()));
        self.global.describe_counter(key, unit, help);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, help: SharedString) {
        self.remember(Description::Gauge(key.clone(), unit, help.clone()));
        self.global.describe_gauge(key, unit, help);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, help: SharedString) {
        self.remember(Description::Histogram(key.clone(), unit, help.clone()));
        self.global.describe_histogram(key, unit, help);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match queue_of(key) {
            Some(q) => self.with_queue(q, |r| r.register_counter(key, metadata)),
            None => self.global.register_counter(key, metadata),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match queue_of(key) {
            Some(q) => self.with_queue(q, |r| r.register_gauge(key, metadata)),
            None => self.global.register_gauge(key, metadata),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match queue_of(key) {
            Some(q) => self.with_queue(q, |r| r.register_histogram(key, metadata)),
            None => self.global.register_histogram(key, metadata),
        }
    }
}

impl Scrape {
    /// The exposition text of every registry, one block per metric family.
    pub(crate) fn render(&self) -> String {
        let mut texts = vec![self.global.render()];
        texts.extend(
            self.queues
                .by_queue
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(|r| r.handle().render()),
        );
        merge(&texts)
    }

    /// Drains histogram samples into their buckets, so memory stays flat between scrapes.
    pub(crate) fn run_upkeep(&self) {
        self.global.run_upkeep();
        for r in self
            .queues
            .by_queue
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            r.handle().run_upkeep();
        }
    }
}

/// One metric family of the text format: its HELP and TYPE lines and its samples.
#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges exposition texts so each family appears once, with one HELP and one TYPE line
/// (the format allows no repeats), in the order families are first seen.
fn merge(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    for text in texts {
        let mut current: Option<String> = None;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let header = line
                .strip_prefix("# HELP ")
                .map(|r| (true, r))
                .or_else(|| line.strip_prefix("# TYPE ").map(|r| (false, r)));
            if let Some((help, rest)) = header {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                let family = families.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    Family::default()
                });
                let slot = if help {
                    &mut family.help
                } else {
                    &mut family.kind
                };
                slot.get_or_insert_with(|| line.to_string());
                current = Some(name);
                continue;
            }
            let name = current.clone().unwrap_or_else(|| {
                line.split(['{', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            });
            families
                .entry(name.clone())
                .or_insert_with(|| {
                    order.push(name.clone());
                    Family::default()
                })
                .samples
                .push(line.to_string());
        }
    }
    let mut out = String::new();
    for name in order {
        let f = &families[&name];
        for line in f.help.iter().chain(&f.kind).chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_several_registries_appear_once() {
        let a = "# HELP x_total Things\n# TYPE x_total counter\nx_total{queue=\"o/a\"} 1\n\n# TYPE y gauge\ny 2\n\n".to_string();
        let b = "# HELP x_total Things\n# TYPE x_total counter\nx_total{queue=\"o/b\"} 3\n\n"
            .to_string();
        let merged = merge(&[a, b]);
        assert_eq!(
            merged,
            "# HELP x_total Things\n# TYPE x_total counter\nx_total{queue=\"o/a\"} 1\nx_total{queue=\"o/b\"} 3\n\n# TYPE y gauge\ny 2\n\n"
        );
    }
}
