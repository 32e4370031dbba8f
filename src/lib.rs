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

pub mod admission;
pub mod cli;
pub mod client;
pub mod control;
pub mod error;
pub mod header;
pub mod notify;
pub mod shard;
pub mod state;
pub mod stats;
pub mod sys;
pub mod watcher;

pub use error::{Error, Outcome};

use admission::{Admission, Limits};
use cli::Options;
use glommio::channels::shared_channel;
use glommio::{CpuSet, LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement, PoolPlacement};
use notify::Notifier;
use shard::ShardSetup;
use state::Interest;
use stats::ShardStats;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    let descriptor_limit = match sys::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot raise the descriptor limit; assuming 1024");
            1024
        }
    };
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
    let (addr, listeners) = bind(opts.bind, opts.port, shards)?;
    let admission = Arc::new(Admission::new(limits(&opts, descriptor_limit, shards)));

    let metrics = match opts.metrics {
        Some(at) => Some(
            std::net::TcpListener::bind(at)
                .map_err(|e| Error::io(format!("binding metrics on {at}"), e))?,
        ),
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
    let shard_admission = admission.clone();
    let pool = LocalExecutorPoolBuilder::new(placement)
        .name("tailsrv-shard")
        .io_memory(IO_MEMORY)
        .on_all_shards(move || async move {
            let setup = setups.lock().map(|mut s| s.pop()).ok().flatten();
            let Some(setup) = setup else { return };
            let index = setup.index;
            shard::run(
                setup,
                shard_published,
                header_timeout,
                shard_admission,
                move || {
                    let _ = ready_tx.send(index);
                },
            )
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
    announce(admission.limits(), shards);
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

/// Resolves the client limits from the options and the descriptor limit.
fn limits(opts: &Options, descriptor_limit: u64, shards: usize) -> Limits {
    let fits = Limits::default_max_clients(descriptor_limit, shards);
    let max_clients = opts.max_clients.map_or(fits, |n| n as usize);
    let max_per_peer = match opts.max_clients_per_ip {
        None => Some(Limits::default_per_peer(max_clients)),
        Some(0) => None,
        Some(n) => Some(n as usize),
    };
    Limits {
        allow: opts.allow.clone(),
        max_clients,
        max_per_peer,
        ipv6_prefix: opts.ipv6_prefix,
        descriptor_limit,
    }
}

/// Says what the client limits are, once start-up can no longer fail.
fn announce(limits: &Limits, shards: usize) {
    let Limits {
        max_clients,
        max_per_peer,
        ipv6_prefix,
        descriptor_limit,
        ..
    } = *limits;
    let fits = Limits::default_max_clients(descriptor_limit, shards);
    if max_clients > fits {
        warn!(
            max_clients, descriptor_limit, fits,
            "--max-clients is more than the descriptor limit leaves room for; accept may run out of descriptors first"
        );
    }
    info!(
        max_clients,
        max_clients_per_ip = max_per_peer.unwrap_or(0),
        ipv6_prefix,
        descriptor_limit,
        reserve = Limits::reserve(descriptor_limit, shards),
        allow = %limits.allow_text(),
        "client limits"
    );
}

/// Binds one listener per shard. Without `--bind`, listens on every IPv6 and IPv4 address,
/// or on every IPv4 address where the system has no IPv6.
fn bind(
    ip: Option<IpAddr>,
    port: u16,
    shards: usize,
) -> Result<(SocketAddr, Vec<std::os::fd::OwnedFd>), Error> {
    let addr = SocketAddr::new(ip.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), port);
    match sys::bind_listeners(addr, shards, BACKLOG) {
        Err(e)
            if ip.is_none()
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
        {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            sys::bind_listeners(v4, shards, BACKLOG)
                .map_err(|e| Error::io(format!("binding {v4}"), e))
        }
        result => result.map_err(|e| Error::io(format!("binding {addr}"), e)),
    }
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
