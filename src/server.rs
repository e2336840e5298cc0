//! Start-up: wires config, master key, sinks, inventory, control plane and listeners
//! together, in the order that makes `/readyz` truthful.

use crate::config::QueueSelector;
use crate::config::{Config, SinkKind, StoreKind};
use crate::control::admin::{self, AdminApi};
use crate::control::audit::AuditLog;
use crate::control::store::kv::backend::KvBackend;
use crate::control::store::{ControlStore, Publisher};
use crate::deadletter::DeadLetters;
use crate::delivery::Delivery;
use crate::dispatch::{Dispatcher, SinkFactory, SinkProbe};
use crate::inventory::{Inventory, Snapshot};
use crate::model::crypto::MasterKey;
use crate::model::state::State;
use crate::policy::Dedup;
use crate::shutdown::terminate_requested;
use crate::signature::PublicUrl;
use crate::sink::nats::NatsConnection;
use crate::sink::spool::feed::Feed;
use crate::sink::spool::retention::{Positions, Spools};
use crate::sink::spool::{self, SpoolWriter};
use crate::sink::QueueSink;
use crate::telemetry::LogReload;
use crate::webhook::Webhook;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Opens each queue's spool log (recovering a torn tail) the first time a snapshot routes
/// to it, with its feed: registered for retention, and handed to the routes that deliver it.
fn spool_factory(
    cfg: &Config,
    delivery: Option<Arc<Delivery>>,
    spools: Arc<Spools>,
    dedup: Arc<Dedup>,
) -> SinkFactory {
    let (dir, segment_bytes) = (cfg.sink.dir.clone(), cfg.sink.segment_bytes);
    let (preallocate, max_bytes) = (cfg.sink.preallocate_bytes, cfg.sink.max_queue_bytes);
    Box::new(move |queue: &str| {
        let writer = SpoolWriter::open(&dir, queue, segment_bytes)?.with_preallocation(preallocate);
        // Deliveries stored within the dedup window before a restart stay duplicates.
        let started = std::time::Instant::now();
        let remembered = spool::recent::recent(&dir, queue, dedup.window(), |key, age| {
            dedup.accepted_ago(&key, age)
        })?;
        if remembered > 0 {
            tracing::info!(
                queue,
                remembered,
                ms = started.elapsed().as_millis() as u64,
                "dedup: deliveries of the window read back from the spool"
            );
        }
        let feed = Arc::new(Feed::new(
            queue,
            writer.next_offset(),
            writer.disk_bytes()?,
            max_bytes,
        ));
        spools.add(queue, feed.clone());
        if let Some(delivery) = &delivery {
            delivery.attach(queue, &feed);
        }
        Ok(Box::new(writer.with_feed(feed)) as Box<dyn QueueSink>)
    })
}

/// Where every queue's consumers are, for retention: its routes' saved cursors and its
/// consumer groups' committed offsets.
fn positions(cfg: &Config, delivery: Option<Arc<Delivery>>) -> anyhow::Result<Positions> {
    let mut groups = Vec::new();
    for g in &cfg.sink.consumer_groups {
        let selector = QueueSelector::parse(&g.queue).expect("validated at load");
        let selector = match selector {
            QueueSelector::Plain(name) => {
                let full = spool::queues::resolve(&cfg.sink.dir, &name)
                    .with_context(|| format!("sink.consumer_groups {}: queue", g.name))?;
                QueueSelector::parse(&full).expect("resolved names parse")
            }
            s => s,
        };
        groups.push((g.name.clone(), selector));
    }
    let dir = cfg.sink.dir.clone();
    Ok(Arc::new(move |queue: &str| {
        let mut at = delivery
            .as_ref()
            .map(|d| d.positions(queue))
            .unwrap_or_default();
        for (group, selector) in &groups {
            if selector.selects(queue) {
                // An unreadable offset keeps everything (0), never deletes what a group needs.
                at.push(spool::groups::committed(&dir, queue, group).unwrap_or(0));
            }
        }
        at
    }))
}

/// The configured sink: its per-queue factory, and a readiness probe for sinks reached over the network.
async fn sink_factory(
    cfg: &Config,
    delivery: Option<Arc<Delivery>>,
    spools: Arc<Spools>,
    dedup: Arc<Dedup>,
) -> anyhow::Result<(SinkFactory, Option<SinkProbe>)> {
    match cfg.sink.kind {
        SinkKind::Spool => Ok((spool_factory(cfg, delivery, spools, dedup), None)),
        SinkKind::Nats => {
            let conn = NatsConnection::connect(&cfg.sink.nats).await?;
            conn.ensure_stream(&cfg.sink.nats).await?;
            if let Some(delivery) = &delivery {
                delivery.start_nats(conn.jetstream(), &cfg.sink.nats.stream);
            }
            let probe_conn = conn.clone();
            let probe: SinkProbe = Arc::new(move || probe_conn.is_connected());
            let factory: SinkFactory = Box::new(move |queue: &str| {
                Ok(Box::new(conn.queue_sink(queue)) as Box<dyn QueueSink>)
            });
            Ok((factory, Some(probe)))
        }
    }
}

/// The control plane's publisher: build a snapshot (rejecting the change if it cannot be built), then swap it in.
fn publisher(
    inventory: Arc<Inventory>,
    dispatcher: Arc<Dispatcher>,
    key: Arc<MasterKey>,
    webhook: Arc<Webhook>,
) -> Publisher {
    Arc::new(move |state: &State| {
        // The store prepares one change at a time, so the serving snapshot is the one
        // this state was derived from (or an unrelated one, which is simply not reused).
        let serving = inventory.load_full();
        let snapshot = Snapshot::build_after(state, &key, &dispatcher, Some(&serving))?;
        let (inventory, webhook) = (inventory.clone(), webhook.clone());
        Ok(Box::new(move || {
            inventory.publish(snapshot);
            webhook.set_loaded();
        }))
    })
}

/// The bucket's open watch, for the KV store's watcher thread.
type KvWatch = async_nats::jetstream::kv::Watch;

/// The configured control store; for `nats_kv` the whole bucket is loaded before it returns.
async fn open_store(
    cfg: &Config,
    key: Arc<MasterKey>,
    publish: Publisher,
    webhook: Arc<Webhook>,
) -> anyhow::Result<(ControlStore, Option<KvWatch>)> {
    if cfg.control.store == StoreKind::File {
        if needs_migration(cfg) {
            let state = crate::control::store::file::journal::load(&cfg.control.state_file)?.state;
            migrate_spool(cfg, &state)?;
        }
        let store = ControlStore::open(&cfg.control.state_file, key, publish)
            .with_context(|| format!("control.state_file {}", cfg.control.state_file.display()))?;
        return Ok((store, None));
    }
    let kv = &cfg.control.nats_kv;
    let backend = Arc::new(KvBackend::connect(kv).await?);
    let (changes, watch) = backend.load().await?;
    if needs_migration(cfg) {
        let mut mirror = crate::control::store::kv::records::Mirror::default();
        for change in &changes {
            let _ = mirror.apply(change);
        }
        migrate_spool(cfg, &mirror.state().0)?;
    }
    let store = ControlStore::open_kv(backend.clone(), &changes, key, publish)
        .with_context(|| format!("control.nats_kv bucket {}", kv.bucket))?
        .with_readiness(Arc::new(move |ready| match ready {
            true => webhook.set_loaded(),
            false => webhook.set_unloaded(),
        }));
    tracing::info!(bucket = %kv.bucket, records = changes.len(), "control: KV bucket loaded");
    Ok((store, Some(watch)))
}

/// Whether the spool holds queues from before they belonged to orgs (`<sink.dir>/<queue>/`).
fn needs_migration(cfg: &Config) -> bool {
    cfg.sink.kind == SinkKind::Spool && !spool::queues::legacy(&cfg.sink.dir).is_empty()
}

/// Moves each spool from before orgs into `<sink.dir>/<org>/<queue>/`, the org being the
/// one whose numbers route to that queue in `state`; refuses to start if it can't tell.
fn migrate_spool(cfg: &Config, state: &State) -> anyhow::Result<()> {
    let orgs_of = |queue: &str| -> Vec<String> {
        let mut orgs: Vec<String> = state
            .numbers
            .iter()
            .filter(|n| &*n.queue == queue)
            .filter_map(|n| state.integration(&n.integration_id))
            .map(|i| i.org.clone())
            .collect();
        orgs.sort();
        orgs.dedup();
        orgs
    };
    for (from, to) in spool::queues::migrate_legacy(&cfg.sink.dir, orgs_of)? {
        tracing::warn!(dir = %cfg.sink.dir.display(), from, to, "spool: moved a queue from before orgs into its org's directory");
    }
    Ok(())
}

/// How often queues nothing references any more are looked for and released.
const RELEASE_EVERY: Duration = Duration::from_millis(500);

/// Releases, every few seconds, the queues no snapshot or request references: a tenant that
/// stops using a queue name gives back its worker thread, files and metric series.
async fn release_unused_queues(dispatcher: Arc<Dispatcher>) {
    let mut tick = tokio::time::interval(RELEASE_EVERY);
    loop {
        tick.tick().await;
        for queue in dispatcher.release_unused() {
            tracing::info!(queue, "releasing a queue no number uses any more");
        }
    }
}

/// Runs the service until SIGINT/SIGTERM; SIGHUP reloads the reloadable parts of `config_path`.
pub async fn run(cfg: Config, config_path: PathBuf, log_reload: LogReload) -> anyhow::Result<()> {
    check_envelope_bound(&cfg)?;
    refuse_if_another_instance(&cfg.control.admin_socket)?;
    let fds = crate::fdbudget::raise_soft_limit();
    if let Some(mode) = cfg.sink.file_mode {
        spool::set_file_mode(mode);
    }
    let prometheus = crate::telemetry::install_recorder()?;
    let key = Arc::new(MasterKey::load(cfg.control.master_key_file.as_deref())?);
    let region = cfg.region();
    let public_url = PublicUrl::parse(&cfg.server.public_url).context("server.public_url")?;
    let inventory = Arc::new(Inventory::default());
    let delivery = Delivery::from_config(&cfg)?;
    let spools = Arc::new(Spools::default());
    let dedup = Arc::new(Dedup::new(
        Duration::from_secs(cfg.policy.dedup_window_secs),
        cfg.policy.dedup_max_entries,
    ));
    let (factory, probe) =
        sink_factory(&cfg, delivery.clone(), spools.clone(), dedup.clone()).await?;
    if cfg.sink.kind == SinkKind::Spool {
        tokio::spawn(spool::retention::run(
            spools,
            cfg.sink.dir.clone(),
            cfg.sink.retain_secs,
            positions(&cfg, delivery)?,
        ));
    }
    let nats_probe = probe.clone();
    metrics::gauge!("sms_ingress_queue_capacity").set(cfg.queues.capacity as f64);
    if cfg.sink.kind == SinkKind::Spool {
        metrics::gauge!("sms_ingress_spool_max_queue_bytes").set(cfg.sink.max_queue_bytes as f64);
    }
    let mut dispatcher = Dispatcher::new(factory, cfg.queues.capacity, cfg.sink.max_batch);
    if let Some(probe) = probe {
        dispatcher = dispatcher.with_probe(probe);
    }
    let dispatcher = Arc::new(dispatcher);
    tokio::spawn(release_unused_queues(dispatcher.clone()));
    let dead_letters = Arc::new(DeadLetters::new(&cfg, inventory.clone()));
    let webhook = Arc::new(Webhook::new(
        region.key,
        public_url.bases().to_vec(),
        cfg.server.max_body_bytes,
        cfg.limits.max_inflight_body_bytes,
        cfg.server.retry_after_secs,
        inventory.clone(),
        dispatcher.clone(),
        dedup.clone(),
        dead_letters.clone(),
    ));
    let publish = publisher(
        inventory.clone(),
        dispatcher.clone(),
        key.clone(),
        webhook.clone(),
    );
    let (store, kv_watch) = open_store(&cfg, key.clone(), publish, webhook.clone()).await?;
    let audit = AuditLog::open(&cfg.control.audit_log)?
        .with_rotation(cfg.control.audit_max_bytes, cfg.control.audit_keep);
    let store = Arc::new(store.with_audit(audit));
    let watch_file = cfg.control.watch_state_file;
    let _file_watch = store.spawn_followers(kv_watch, watch_file)?;
    crate::control::import::warm_up();
    let vendor = crate::control::vendor::TwilioClient::from_config(&cfg.control)?.map(Arc::new);
    let admin_api = Arc::new(
        AdminApi::new(store, &cfg.control.admin_tokens, region, dead_letters)?
            .with_vendor(vendor)
            .with_queue_limit(cfg.queues.max_per_org)
            .with_rejections(webhook.rejections()),
    );
    let admin_listener = bind_admin_socket(&cfg.control.admin_socket)?;

    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => Some(crate::listener::tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("server.listen {}", cfg.server.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics.listen)
        .await
        .with_context(|| format!("metrics.listen {}", cfg.metrics.listen))?;

    let before_scrape: Arc<dyn Fn() + Send + Sync> = {
        let (inventory, webhook) = (inventory.clone(), webhook.clone());
        Arc::new(move || {
            let loaded_at = inventory
                .load()
                .built_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            metrics::gauge!("sms_ingress_snapshot_age_seconds")
                .set(crate::telemetry::unix_now() - loaded_at);
            metrics::gauge!("sms_ingress_ready")
                .set(f64::from(u8::from(webhook.unready().is_none())));
            if let Some(probe) = &nats_probe {
                metrics::gauge!("sms_ingress_nats_connected").set(f64::from(u8::from(probe())));
            }
        })
    };
    let metrics_addr = metrics_listener.local_addr()?;
    let (stopping, shutdown) = crate::shutdown::channel();
    tokio::spawn(crate::telemetry::serve_metrics(
        metrics_listener,
        prometheus,
        before_scrape,
        shutdown.clone(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        admin_api.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(sweep_dedup(
        dedup,
        Duration::from_secs(cfg.policy.dedup_window_secs),
    ));
    let mut limits = cfg.limits.clone();
    let budget = crate::fdbudget::settle(fds, limits.max_connections, dispatcher.open_queues())?;
    tracing::info!(
        rlimit_nofile = budget.limit,
        started_with = budget.started_with,
        reserved = budget.reserved,
        connections = budget.connections,
        max_connections = limits.max_connections,
        "fd budget: webhook connections capped to what the fd limit leaves"
    );
    if budget.connections < limits.max_connections {
        tracing::warn!(
            connections = budget.connections,
            max_connections = limits.max_connections,
            "fd budget: fewer webhook connections than limits.max_connections; raise RLIMIT_NOFILE (LimitNOFILE=)"
        );
    }
    limits.max_connections = budget.connections;
    // Registered before "serving" is logged: a SIGHUP from then on reloads, never kills.
    for result in ["accepted", "rejected"] {
        metrics::counter!("sms_ingress_config_reloads_total", "result" => result).increment(0);
    }
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tracing::info!(
        listen = %listener.local_addr()?,
        metrics = %metrics_addr,
        admin_socket = %cfg.control.admin_socket.display(),
        region = region.name,
        tls = tls.is_some(),
        numbers = inventory.load().len(),
        "sms-ingress serving"
    );
    tokio::spawn(reload_on_sighup(
        hup,
        Reload {
            path: config_path,
            running: cfg.clone(),
            log: log_reload,
            admin: admin_api.clone(),
        },
    ));
    tokio::spawn(crate::listener::serve(
        listener, tls, webhook, limits, shutdown,
    ));
    terminate_requested().await;
    let grace = Duration::from_millis(cfg.limits.shutdown_grace_ms);
    tracing::info!(
        grace_ms = cfg.limits.shutdown_grace_ms,
        "shutdown signal: draining connections"
    );
    stopping.begin();
    tokio::select! {
        closed = stopping.wait_closed(grace) => {
            if closed {
                tracing::info!("all connections closed; every acknowledged webhook is durable; exiting");
            } else {
                tracing::warn!("shutdown grace period over with connections still open; exiting");
            }
        }
        _ = terminate_requested() => {
            tracing::warn!("second shutdown signal: exiting at once");
            std::process::exit(130);
        }
    }
    Ok(())
}

/// What SIGHUP needs: the file, the running config, and the parts that can change live.
struct Reload {
    path: PathBuf,
    running: Config,
    log: LogReload,
    admin: Arc<AdminApi>,
}

/// On SIGHUP: re-read the config; apply log level and admin tokens, re-read the state file,
/// and name every other changed section, which needs a restart. A bad file changes nothing.
async fn reload_on_sighup(hup: std::io::Result<tokio::signal::unix::Signal>, mut r: Reload) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot listen for SIGHUP; config reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        // After logrotate moved it: a fresh file at the path, whatever the config says.
        r.admin.store().audit().reopen();
        match Config::load(&r.path) {
            Ok(new) => apply_reload(&mut r, new),
            Err(e) => {
                metrics::counter!("sms_ingress_config_reloads_total", "result" => "rejected")
                    .increment(1);
                tracing::warn!(error = %e, "SIGHUP: config rejected; the running config stays");
            }
        }
    }
}

fn apply_reload(r: &mut Reload, new: Config) {
    if let Err(e) = r.admin.set_tokens(&new.control.admin_tokens) {
        metrics::counter!("sms_ingress_config_reloads_total", "result" => "rejected").increment(1);
        tracing::warn!(error = %e, "SIGHUP: admin tokens rejected; the running config stays");
        return;
    }
    if new.log.level != r.running.log.level {
        if let Err(e) = (r.log)(&new.log.level) {
            tracing::warn!(error = %e, "SIGHUP: log.level not applied");
        }
    }
    if let Some(Err(e)) = r.admin.store().sync_with_file() {
        tracing::warn!(error = %e, "SIGHUP: state file not reloaded");
    }
    let restart_needed: Vec<&str> = [
        (
            "server",
            format!("{:?}", new.server) != format!("{:?}", r.running.server),
        ),
        (
            "metrics",
            format!("{:?}", new.metrics) != format!("{:?}", r.running.metrics),
        ),
        (
            "sink",
            format!("{:?}", new.sink) != format!("{:?}", r.running.sink),
        ),
        (
            "queues",
            format!("{:?}", new.queues) != format!("{:?}", r.running.queues),
        ),
        (
            "limits",
            format!("{:?}", new.limits) != format!("{:?}", r.running.limits),
        ),
        (
            "policy",
            format!("{:?}", new.policy) != format!("{:?}", r.running.policy),
        ),
        (
            "dead_letters",
            format!("{:?}", new.dead_letters) != format!("{:?}", r.running.dead_letters),
        ),
        (
            "delivery",
            format!("{:?}", new.delivery) != format!("{:?}", r.running.delivery),
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    metrics::counter!("sms_ingress_config_reloads_total", "result" => "accepted").increment(1);
    tracing::info!(
        admin_tokens = new.control.admin_tokens.len(),
        log_level = %new.log.level,
        restart_needed = ?restart_needed,
        "SIGHUP: config reloaded (admin tokens, log level, state file)"
    );
    r.running = new;
}

/// Binds the admin socket (owner-only), replacing a stale socket file from an earlier run.
fn bind_admin_socket(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control.admin_socket dir {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "control.admin_socket {} exists and is not a socket",
            path.display()
        );
        std::fs::remove_file(path)?;
    }
    // Bound under a umask, so the socket is never open to others, even briefly.
    // SAFETY: umask only swaps the process's file-creation mask.
    let previous = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| format!("control.admin_socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Refuses to start when a live process answers the admin socket: another instance runs
/// on this state and spool (a stale socket of a dead one is replaced at bind).
fn refuse_if_another_instance(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    anyhow::ensure!(
        !(is_socket && std::os::unix::net::UnixStream::connect(path).is_ok()),
        "control.admin_socket {} is answered by a running process: another sms-ingress \
         instance is using this configuration's state and spool; stop it first",
        path.display()
    );
    Ok(())
}

async fn sweep_dedup(dedup: Arc<Dedup>, window: Duration) {
    let period = (window / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        // A sweep walks the whole map; a blocking thread keeps it off the request workers.
        let dedup = dedup.clone();
        let _ = tokio::task::spawn_blocking(move || dedup.sweep()).await;
    }
}

/// Refuses a `server.max_body_bytes` whose envelopes could exceed a sink record.
fn check_envelope_bound(cfg: &Config) -> anyhow::Result<()> {
    let most = crate::sink::max_body_bytes_for(cfg.limits.max_header_bytes, &cfg.server.public_url);
    anyhow::ensure!(
        cfg.server.max_body_bytes <= most,
        "server.max_body_bytes = {}: an envelope of such a body (the body, the fields decoded \
         from it, the signature header, the URL) can exceed the sink's record limit of {} bytes; \
         at most {most} with limits.max_header_bytes = {}",
        cfg.server.max_body_bytes,
        crate::sink::MAX_RECORD_BYTES,
        cfg.limits.max_header_bytes,
    );
    Ok(())
}

/// `check-config`: everything `serve` would refuse to start on, without binding anything.
pub fn check(cfg: &Config) -> anyhow::Result<String> {
    check_envelope_bound(cfg)?;
    let key = MasterKey::load(cfg.control.master_key_file.as_deref())?;
    let (state, control) = match cfg.control.store {
        StoreKind::File => (
            crate::control::store::file::journal::load(&cfg.control.state_file)?.state,
            String::new(),
        ),
        StoreKind::NatsKv => (
            State::default(),
            format!(
                " (control plane in KV bucket {} at {}, not contacted by check-config)",
                cfg.control.nats_kv.bucket,
                cfg.control.nats_kv.servers.join(",")
            ),
        ),
    };
    for i in &state.integrations {
        key.open(&i.auth_token, &i.id).with_context(|| {
            format!(
                "integration {}: Auth Token does not open with this master key",
                i.id
            )
        })?;
    }
    if let (Some(cert), Some(tls_key)) = (&cfg.server.tls_cert, &cfg.server.tls_key) {
        crate::listener::tls_acceptor(cert, tls_key)?;
    }
    for route in &cfg.delivery.routes {
        crate::delivery::sign::Secrets::load(&route.secret_file)
            .with_context(|| format!("delivery.routes {}: secret_file", route.name))?;
    }
    let sink = match cfg.sink.kind {
        SinkKind::Spool => format!("spool sink at {}", cfg.sink.dir.display()),
        SinkKind::Nats => format!(
            "nats sink, stream {} at {} (not contacted by check-config)",
            cfg.sink.nats.stream,
            cfg.sink.nats.servers.join(",")
        ),
    };
    Ok(format!(
        "config OK: region {} ({}), {} integrations, {} numbers{control}, {} admin tokens, {sink}, {} delivery routes",
        cfg.region().name,
        cfg.region().webhook_url(),
        state.integrations.len(),
        state.numbers.len(),
        cfg.control.admin_tokens.len(),
        cfg.delivery.routes.len(),
    ))
}
