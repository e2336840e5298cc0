//! Criterion benchmarks of the number inventory at 1k, 100k and 1M numbers: what one
//! control-plane change costs (import, delete, deactivate and reactivate an integration),
//! measured as the store runs it without the disk: copy the serving state, change it,
//! validate the change, take the delta a journal line holds, and build the next snapshot
//! from the serving one. Before the groups run, the heap bytes each number costs (state
//! and snapshot, shared) are counted with a counting allocator and printed, for an
//! inventory loaded whole and for one built by imports as `sms-loadtest setup` does. Lookups are
//! `hot_path`'s `snapshot/lookup_hit_*`. Not run in CI.
//!
//! `cargo bench --bench inventory` (add `-- change/import` to run one group).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sms_ingress::dispatch::{Dispatcher, SinkFactory};
use sms_ingress::inventory::Snapshot;
use sms_ingress::model::crypto::{MasterKey, Secret};
use sms_ingress::model::state::{
    Integration, IntegrationStatus, Number, NumberStatus, NumberType, Orphans, State,
};
use sms_ingress_testkit::{fixtures, NullSink};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// Two integrations (the second one's numbers are what a status change concerns: 1 %
/// of the inventory, at least one) and `n` numbers over 4 queues.
fn state(n: usize) -> (State, MasterKey, Dispatcher) {
    let mk = fixtures::master_key();
    let integration = |id: &str| Integration {
        auth_token: mk.seal(&Secret::new("tok"), id).unwrap(),
        ..fixtures::integration(id, "org-a")
    };
    let numbers = (0..n).map(|i| number(i, if i % 100 == 0 { "int-2" } else { "int-1" }));
    let state = State {
        version: 1,
        integrations: vec![integration("int-1"), integration("int-2")],
        numbers: numbers.collect(),
    };
    let factory: SinkFactory = Box::new(|_| Ok(Box::new(NullSink)));
    (state, mk, Dispatcher::new(factory, 1024, 1024))
}

fn number(i: usize, integration: &str) -> Number {
    Number {
        sender_id: format!("+1415{:07}", 2_000_000 + i).into(),
        kind: NumberType::Local,
        country: "US".into(),
        integration_id: integration.into(),
        queue: format!("q{}", i % 4).into(),
        status: NumberStatus::Active,
        compliance: None,
    }
}

/// Live heap bytes per number of a state of 1M numbers and its snapshot, as the service
/// holds them (the snapshot shares the state's numbers).
fn bytes_per_number() {
    let n = 1_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let (st, mk, d) = state(n);
    let snap = Snapshot::build(&st, &mk, &d).unwrap();
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "inventory/bytes_per_number_{n}: {:.1} B (state and snapshot; {} bytes live)",
        (after - before) as f64 / n as f64,
        after - before
    );
    drop((snap, st, d));
    // As `sms-loadtest setup` builds it: 20 imports of 50,000 through the admin API, each
    // on a copy of the previous version (which is then dropped).
    let before = LIVE.load(Ordering::Relaxed);
    let (mut st, mk, d) = state(0);
    for chunk in 0..20 {
        let mut next = st.clone();
        for i in chunk * 50_000..(chunk + 1) * 50_000 {
            next.numbers.insert(number(i, "int-1"));
        }
        st = next;
    }
    let snap = Snapshot::build(&st, &mk, &d).unwrap();
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "inventory/bytes_per_number_{n}_imported: {:.1} B (20 imports of 50,000)",
        (after - before) as f64 / n as f64,
    );
    drop((snap, st, d));
}

/// One change as the store runs it, without the disk: copy, change, validate, the
/// journal's delta, the next snapshot.
fn apply(
    serving: &(State, Snapshot),
    mk: &MasterKey,
    d: &Dispatcher,
    change: impl FnOnce(&mut State),
) -> Snapshot {
    let (st, snap) = serving;
    let mut next = st.clone();
    change(&mut next);
    next.version += 1;
    next.validate_change(st, Orphans::Refused).unwrap();
    black_box(next.numbers.delta_from(&st.numbers));
    Snapshot::build_after(&next, mk, d, Some(snap)).unwrap()
}

fn changes(c: &mut Criterion) {
    bytes_per_number();
    let mut g = c.benchmark_group("change");
    g.sample_size(50).measurement_time(Duration::from_secs(4));
    for n in SIZES {
        let (st, mk, d) = state(n);
        let snap = Snapshot::build(&st, &mk, &d).unwrap();
        let serving = (st, snap);
        let fresh = number(n + 1, "int-1");
        g.bench_function(format!("import_{n}"), |b| {
            b.iter(|| apply(&serving, &mk, &d, |s| drop(s.numbers.insert(fresh.clone()))))
        });
        let gone = number(n / 2, "int-1").sender_id;
        g.bench_function(format!("delete_{n}"), |b| {
            b.iter(|| apply(&serving, &mk, &d, |s| drop(s.numbers.remove_id(&gone))))
        });
        let set = |status| {
            move |s: &mut State| {
                s.integrations[1].status = status;
            }
        };
        g.bench_function(format!("deactivate_{n}"), |b| {
            b.iter(|| apply(&serving, &mk, &d, set(IntegrationStatus::Inactive)))
        });
        let inactive = {
            let mut st = serving.0.clone();
            st.integrations[1].status = IntegrationStatus::Inactive;
            let snap = Snapshot::build(&st, &mk, &d).unwrap();
            (st, snap)
        };
        g.bench_function(format!("reactivate_{n}"), |b| {
            b.iter(|| apply(&inactive, &mk, &d, set(IntegrationStatus::Active)))
        });
    }
    g.finish();
}

criterion_group!(benches, changes);
criterion_main!(benches);
