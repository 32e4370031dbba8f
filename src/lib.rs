//! tailsrv streams one growing file to many TCP clients: `tail -f` as a server.
//!
//! ```text
//!                 inotify                 doorbell (one bounded channel per shard)
//!   FILE ───────────────────▶ watcher ──────────────┬──────────────┬─────────────▶ …
//!     │                  (own executor,             ▼              ▼
//!     │                   sleeps in poll)       shard 0        shard 1          (one executor
//!     │                                        listener        listener          per core,
//!     │                                         clients         clients          SO_REUSEPORT)
//!     └──────── sendfile: page cache ──────────▶ sockets        sockets
//! ```
//!
//! - [`watcher`]: owns the inotify watch on FILE and its directory, and the signal
//!   descriptor. It publishes the file's size and the server's phase in [`Published`] and
//!   rings the doorbells of the shards that have clients waiting for growth, never waiting on
//!   a shard.
//! - [`state`]: what the watcher and the shards share: [`Published`] and the doorbells.
//! - [`shard`]: one glommio executor per core, each with its own listener on the shared port.
//!   It answers the doorbell by waking the clients that were waiting for the file to grow.
//! - [`client`]: one task per connection: reads the header ([`header`]), then moves file
//!   bytes to the socket with sendfile ([`sys`]), waiting on a full socket without holding
//!   up anyone else.
//! - [`run`] wires it together; `main.rs` only parses options and logs.
//!
//! [`Published`]: state::Published

pub mod addr;
pub mod cli;
pub mod client;
pub mod control;
pub mod error;
pub mod fetch;
pub mod header;
pub mod metrics;
pub mod notify;
pub mod shard;
pub mod state;
pub mod stats;
pub mod sys;
pub mod systemd;
pub mod watcher;

pub use error::{Error, Outcome};

use cli::Options;
use glommio::channels::shared_channel;
use glommio::{CpuSet, LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement, PoolPlacement};
use notify::Notifier;
use shard::ShardSetup;
use state::Interest;
use stats::ShardStats;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};
use watcher::{SideJobs, Watch};

/// io_uring buffer memory per executor.
///
/// Why so small? glommio registers this buffer with each of its three rings, and the
/// registration counts against RLIMIT_MEMLOCK (8 MiB for an unprivileged user). tailsrv
/// never reads through glommio's buffers (the payload goes by sendfile), so the 64 KiB
/// minimum is plenty: 8 shards and the watcher lock 9 x 3 x 64 KiB = 1.7 MiB.
const IO_MEMORY: usize = 64 << 10;

/// Listen backlog per shard: room for a burst of thousands of connects.
const BACKLOG: i32 = 4096;

/// How long start-up may take before tailsrv gives up on a shard that never became ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the server until a signal, or until the file is gone or truncated.
pub fn run(opts: Options) -> Result<Outcome, Error> {
    // Signals first: every thread started from here on inherits the blocked mask, so SIGINT,
    // SIGTERM and SIGHUP reach only the signalfd the watcher reads.
    let signals = sys::signal_fd().map_err(|e| Error::io("setting up signal handling", e))?;
    match sys::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "descriptor limit"),
        Err(e) => warn!(error = %e, "cannot raise the descriptor limit"),
    }
    // glommio refuses to start an executor under 512 KiB of locked memory, and then only
    // says that a thread failed; say it plainly instead.
    const MIN_MEMLOCK: u64 = 512 << 10;
    match sys::raise_memlock_limit() {
        Ok(soft) if soft < MIN_MEMLOCK => {
            return Err(Error::Config(format!(
                "the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`) is {} KiB; tailsrv needs at least {} KiB \
                 (raise it, e.g. LimitMEMLOCK=8M in a systemd unit)",
                soft >> 10,
                MIN_MEMLOCK >> 10
            )))
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the locked-memory limit"),
    }
    let watch = Watch::new(&opts.file)?;
    let published = watch.published();

    let cpus = sys::allowed_cpus().map_err(|e| Error::io("reading the CPU affinity mask", e))?;
    let shards = opts.shards.map_or(cpus.len(), usize::from).max(1);
    let (addr, listeners) = addr::bind_shards(opts.bind.as_ref(), opts.port, shards, BACKLOG)?;

    let metrics = match &opts.metrics {
        Some(at) => Some(addr::bind_metrics(at)?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let notifier = Notifier::from_env();

    let (placement, pinned) = placement(shards, &cpus);
    let mut bells = Vec::with_capacity(shards);
    let mut status_changes = Vec::new();
    let mut setups = Vec::with_capacity(shards);
    let mut all_stats = Vec::with_capacity(shards);
    for (index, listener) in listeners.into_iter().enumerate() {
        let (bell, doorbell) = shared_channel::new_bounded(1);
        let stats = Arc::new(ShardStats::default());
        let interest = Arc::new(Interest::default());
        bells.push((bell, interest.clone()));
        all_stats.push(stats.clone());
        let status = notifier.enabled().then(|| {
            let (tx, rx) = shared_channel::new_bounded(1);
            status_changes.push(rx);
            tx
        });
        setups.push(ShardSetup {
            index,
            listener,
            doorbell,
            interest,
            status,
            stats,
        });
    }
    // Handed out in reverse by pop(); the index inside each setup is what counts.
    let setups = Arc::new(Mutex::new(setups));
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let header_timeout = opts.header_timeout;
    let shard_published = published.clone();
    let pool = LocalExecutorPoolBuilder::new(placement)
        .name("tailsrv-shard")
        .io_memory(IO_MEMORY)
        .on_all_shards(move || async move {
            let setup = setups.lock().map(|mut s| s.pop()).ok().flatten();
            let Some(setup) = setup else { return };
            let index = setup.index;
            shard::run(setup, shard_published, header_timeout, move || {
                let _ = ready_tx.send(index);
            })
            .await
        })
        .map_err(|e| Error::Runtime(format!("starting {shards} shard executors: {e}")))?;

    let jobs = SideJobs {
        stats: all_stats.clone(),
        label: format!("{} on {addr}", opts.file.display()),
        metrics,
        notifier,
        status_changes,
    };
    let watcher = LocalExecutorBuilder::new(Placement::Unbound)
        .name("tailsrv-watcher")
        .io_memory(IO_MEMORY)
        .spawn(move || async move { watch.run(signals, bells, jobs).await })
        .map_err(|e| Error::Runtime(format!("starting the watcher executor: {e}")))?;

    for _ in 0..shards {
        ready_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .map_err(|_| Error::Runtime("a shard executor failed to start".into()))?;
    }
    info!(
        addr = %addr, port = addr.port(), shards, pinned, file = %opts.file.display(),
        "listening"
    );
    if published.file().is_none() {
        info!(file = %opts.file.display(), "file does not exist yet; waiting for it");
    }
    if let Some(at) = metrics_addr {
        info!(addr = %at, "serving metrics at http://{at}/metrics");
    }
    notifier.ready(&format!(
        "serving {} on {addr} with {shards} shards",
        opts.file.display()
    ));

    let outcome = watcher
        .join()
        .map_err(|e| Error::Runtime(format!("watcher executor failed: {e}")))
        .and_then(|r| r);
    let mut failed = None;
    for result in pool.join_all() {
        if let Err(e) = result {
            failed = Some(Error::Runtime(format!("shard executor failed: {e}")));
        }
    }
    let total = |get: fn(&ShardStats) -> u64| all_stats.iter().map(|s| get(s)).sum::<u64>();
    let bytes_sent = total(|s| ShardStats::get(&s.bytes_sent));
    let probe_bytes = total(|s| ShardStats::get(&s.probe_bytes));
    let outcome = outcome?;
    if let Some(e) = failed {
        return Err(e);
    }
    info!(?outcome, bytes_sent, probe_bytes, "stopped");
    Ok(outcome)
}

/// Shards pinned one per allowed CPU when they fit; otherwise fenced to the allowed CPUs.
fn placement(shards: usize, cpus: &[usize]) -> (PoolPlacement, bool) {
    match CpuSet::online() {
        Ok(set) => {
            let set = set.filter(|l| cpus.contains(&l.cpu));
            if set.is_empty() {
                (PoolPlacement::Unbound(shards), false)
            } else if shards <= set.len() {
                (PoolPlacement::MaxSpread(shards, Some(set)), true)
            } else {
                (PoolPlacement::Fenced(shards, set), false)
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot read the CPU topology; shards run unpinned");
            (PoolPlacement::Unbound(shards), false)
        }
    }
}
