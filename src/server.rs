//! Starting and stopping a server: [`Server::bind`] sets everything up, [`Server::serve`] runs
//! it until a shutdown future resolves, and a [`Handle`] reads its state or stops it.
//!
//! Why split binding from serving? A caller (the binary, a test, an embedding program) learns
//! the bound address, or a start-up error, before anything waits; and it decides what "time
//! to stop" means: the binary waits for a signal, a test for the end of its script.
//! Process-wide set-up (signal mask, resource limits, logging) is not done here, so several
//! servers can run in one process.

use crate::accept;
use crate::addr;
use crate::admission::{Admission, Limits};
use crate::cli::Options;
use crate::error::{Error, Outcome};
use crate::handle::Handle;
use crate::notify::Notifier;
use crate::shard::ShardSetup;
use crate::state::Interest;
use crate::stats::ShardStats;
use crate::sys;
use crate::watcher::{SideJobs, Watch};
use futures_lite::future;
use glommio::channels::shared_channel;
use glommio::{
    CpuSet, ExecutorJoinHandle, LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement,
    PoolPlacement, PoolThreadHandles,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;
use tracing::{error, info, warn};

/// io_uring buffer memory per executor.
///
/// Why so small? glommio registers this buffer with each of its three rings, and the
/// registration counts against RLIMIT_MEMLOCK (8 MiB for an unprivileged user). tailsrv
/// never reads through glommio's buffers (the payload goes by sendfile), so the 64 KiB
/// minimum is plenty: 8 shards and the watcher lock 9 x 3 x 64 KiB = 1.7 MiB.
const IO_MEMORY: usize = 64 << 10;

/// Submission queue entries per io_uring of a shard (glommio's default is 128).
///
/// Why more? glommio hands the kernel at most one ring's worth of queued operations each
/// time it looks at its reactor. Every accepted connection queues a poll or two (glommio
/// arms one for each new stream, and one more when its client starts waiting), and a shard
/// busy sending appends to thousands of clients looks at its reactor only between rounds
/// of sends. With 128, a burst of thousands of connections on a busy shard took so many
/// rounds to submit that headers already sent were not read within the header timeout
/// (docs/benchmarks.md, "A busy shard that never looked at its reactor"). 1,024 drains
/// such a burst in a few rounds; it costs about 100 KiB of ring memory per ring, three rings
/// per shard.
const SHARD_RING_DEPTH: usize = 1024;

/// Listen backlog per shard: room for a burst of thousands of connects.
const BACKLOG: i32 = 4096;

/// How long start-up may take before tailsrv gives up on a shard that never became ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the executors have to finish once the server is stopping (asked to, or the
/// file ended it): the drain's 2 s and the shards' 0.5 s close grace, with room to spare
/// on a loaded machine.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A server whose listeners are bound and whose executors run; [`serve`](Server::serve)
/// waits for it to end. Dropping it without serving stops it and waits for its threads.
pub struct Server {
    handle: Handle,
    metrics_addr: Option<SocketAddr>,
    watcher: Option<ExecutorJoinHandle<Result<Outcome, Error>>>,
    pool: Option<PoolThreadHandles<()>>,
    /// Set when the watcher's executor has finished (or died).
    watcher_done: Latch,
}

impl Server {
    /// Opens and watches the file, binds the listeners (and `--metrics`), and starts the
    /// watcher and shard executors; returns once every shard accepts connections.
    ///
    /// Nothing process-wide is touched: signals and resource limits are the caller's (see
    /// [`crate::process`]).
    pub fn bind(opts: &Options) -> Result<Server, Error> {
        let watch = Watch::new(&opts.file, opts.on_rotation, opts.linger)?;
        let published = watch.published();

        let cpus =
            sys::allowed_cpus().map_err(|e| Error::io("reading the CPU affinity mask", e))?;
        let shards = opts.shards.map_or(cpus.len(), usize::from).max(1);
        let descriptor_limit = sys::nofile_limit().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the descriptor limit; assuming 1024");
            1024
        });
        check_descriptors(descriptor_limit, shards)?;
        let (addr, listeners) = addr::bind_shards(opts.bind.as_ref(), opts.port, shards, BACKLOG)?;
        let admission = Arc::new(Admission::new(limits(opts, descriptor_limit, shards)));

        let metrics = match &opts.metrics {
            Some(at) => Some(addr::bind_metrics(at)?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        let notifier = Notifier::from_env();
        let stop =
            Arc::new(sys::eventfd().map_err(|e| Error::io("creating the stop descriptor", e))?);

        let (placement, pinned) = placement(shards, &cpus);
        let mut bells = Vec::with_capacity(shards);
        let mut interests = Vec::with_capacity(shards);
        let mut status_changes = Vec::new();
        let mut setups = Vec::with_capacity(shards);
        let page: Arc<str> = crate::web::page(&opts.file).into();
        let mut all_stats = Vec::with_capacity(shards);
        for (index, listener) in listeners.into_iter().enumerate() {
            let (bell, doorbell) = shared_channel::new_bounded(1);
            let stats = Arc::new(ShardStats::default());
            let interest = Arc::new(
                Interest::new().map_err(|e| Error::io("creating a shard's growth bell", e))?,
            );
            bells.push((bell, interest.clone()));
            interests.push(interest.clone());
            all_stats.push(stats.clone());
            let status = notifier.enabled().then(|| {
                let (tx, rx) = shared_channel::new_bounded(1);
                status_changes.push(rx);
                tx
            });
            let room =
                sys::epoll().map_err(|e| Error::io("creating a shard's set of full sockets", e))?;
            setups.push(ShardSetup {
                index,
                listener,
                doorbell,
                interest,
                status,
                stats,
                room,
                http: !opts.no_http,
                page: page.clone(),
            });
        }
        // Handed out in reverse by pop(); the index inside each setup is what counts.
        let setups = Arc::new(Mutex::new(setups));
        let (ready_tx, ready_rx) = mpsc::channel::<usize>();
        let header_timeout = opts.header_timeout;
        let shard_published = published.clone();
        let audience = watch.audience();
        let shard_admission = admission.clone();
        // Why carry the caller's log subscriber over? The executors' threads would otherwise
        // log to the process-wide one: the same thing in the binary, but a test running
        // several servers in one process gives each its own (see tests/common).
        let logs = tracing::dispatcher::get_default(|d| d.clone());
        let shard_logs = logs.clone();
        let pool = LocalExecutorPoolBuilder::new(placement)
            .name("tailsrv-shard")
            .io_memory(IO_MEMORY)
            .ring_depth(SHARD_RING_DEPTH)
            .on_all_shards(move || async move {
                let _logs = tracing::dispatcher::set_default(&shard_logs);
                let setup = setups.lock().map(|mut s| s.pop()).ok().flatten();
                let Some(setup) = setup else { return };
                let index = setup.index;
                accept::run(
                    setup,
                    shard_published,
                    audience,
                    header_timeout,
                    shard_admission,
                    move || {
                        let _ = ready_tx.send(index);
                    },
                )
                .await
            })
            .map_err(|e| Error::Runtime(format!("starting {shards} shard executors: {e}")))?;

        let handle = Handle {
            addr,
            published: published.clone(),
            stats: all_stats.clone(),
            watcher: watch.stats(),
            stop: stop.clone(),
            interests,
        };
        let jobs = SideJobs {
            stats: all_stats,
            label: format!("{} on {addr}", opts.file.display()),
            limits: admission.limits().clone(),
            metrics,
            notifier,
            status_changes,
        };
        let watcher_done = Latch::default();
        // Set when the watcher's future ends or unwinds, so `serve` never waits for nothing.
        // Why made here and moved in, not made inside the future? If glommio fails to build
        // the executor on its thread, the closure is dropped without being called: the
        // latch must be set then too.
        let done = SetOnDrop(watcher_done.clone());
        let watcher = LocalExecutorBuilder::new(Placement::Unbound)
            .name("tailsrv-watcher")
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                let _logs = tracing::dispatcher::set_default(&logs);
                let _done = done;
                watch.run(stop, bells, jobs).await
            });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                // The shards are running: stop them before reporting the failure.
                stop_unserved(&handle, None, Some(pool));
                return Err(Error::Runtime(format!(
                    "starting the watcher executor: {e}"
                )));
            }
        };
        let server = Server {
            handle,
            metrics_addr,
            watcher: Some(watcher),
            pool: Some(pool),
            watcher_done,
        };

        for _ in 0..shards {
            if ready_rx.recv_timeout(STARTUP_TIMEOUT).is_err() {
                // Dropping `server` stops what did start.
                return Err(Error::Runtime("a shard executor failed to start".into()));
            }
        }
        announce(admission.limits(), shards);
        info!(
            addr = %addr, port = addr.port(), shards, pinned, file = %opts.file.display(),
            "listening"
        );
        if published.current().is_none() {
            // Why WARN, and the full path? A typo in FILE starts a server that serves
            // nothing, quietly; the path as resolved shows where tailsrv is looking.
            warn!(
                file = %full_path(&opts.file).display(),
                "file does not exist; waiting for it to appear"
            );
        }
        if let Some(at) = metrics_addr {
            info!(addr = %at, "serving metrics at http://{at}/metrics");
        }
        notifier.ready(&format!(
            "serving {} on {addr} with {shards} shards",
            opts.file.display()
        ));
        Ok(server)
    }

    /// The address clients connect to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The address of the metrics endpoint, when `--metrics` was given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A handle to read the server's state, or stop it, from any thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Serves until `shutdown` resolves (then closes every client and returns
    /// [`Outcome::Signalled`]), or until the file is gone or truncated. Blocks the calling
    /// thread, which polls `shutdown`.
    pub fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<Outcome, Error> {
        let done = self.watcher_done.clone();
        let asked = future::block_on(future::or(
            async {
                shutdown.await;
                true
            },
            async {
                done.wait().await;
                false
            },
        ));
        if asked {
            self.handle.shutdown();
        }
        self.join()
    }

    /// Serves until the file is gone or truncated, or [`Handle::shutdown`] is called.
    pub fn wait(self) -> Result<Outcome, Error> {
        self.serve(future::pending())
    }

    /// Waits for every executor to finish and gathers the result.
    fn join(&mut self) -> Result<Outcome, Error> {
        let (watcher, pool) = (self.watcher.take(), self.pool.take());
        let joined = join_within(STOP_TIMEOUT, move || {
            let outcome = match watcher {
                Some(watcher) => watcher
                    .join()
                    .map_err(|e| Error::Runtime(format!("watcher executor failed: {e}")))
                    .and_then(|r| r),
                None => Err(Error::Runtime("the watcher executor never started".into())),
            };
            let mut failed = None;
            for result in pool.map(|p| p.join_all()).unwrap_or_default() {
                if let Err(e) = result {
                    failed = Some(Error::Runtime(format!("shard executor failed: {e}")));
                }
            }
            match (outcome, failed) {
                (Err(e), _) | (Ok(_), Some(e)) => Err(e),
                (Ok(outcome), None) => Ok(outcome),
            }
        });
        let outcome = joined.unwrap_or_else(|| {
            Err(Error::Runtime(format!(
                "the executors did not stop within {STOP_TIMEOUT:?} of being asked to; \
                 abandoning them"
            )))
        })?;
        let bytes_sent = self.handle.bytes_sent();
        info!(?outcome, bytes_sent, "stopped");
        Ok(outcome)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.watcher.is_some() || self.pool.is_some() {
            stop_unserved(&self.handle, self.watcher.take(), self.pool.take());
        }
    }
}

/// Stops a server nobody is serving and waits for its threads, within [`STOP_TIMEOUT`];
/// errors are only logged.
fn stop_unserved(
    handle: &Handle,
    watcher: Option<ExecutorJoinHandle<Result<Outcome, Error>>>,
    pool: Option<PoolThreadHandles<()>>,
) {
    // Without a watcher the shards stop by themselves: their doorbells close.
    handle.shutdown();
    let joined = join_within(STOP_TIMEOUT, move || {
        if let Some(watcher) = watcher {
            if let Err(e) = watcher.join() {
                warn!(error = %e, "watcher executor failed while stopping");
            }
        }
        if let Some(pool) = pool {
            for result in pool.join_all() {
                if let Err(e) = result {
                    warn!(error = %e, "shard executor failed while stopping");
                }
            }
        }
    });
    if joined.is_none() {
        error!(
            timeout = ?STOP_TIMEOUT,
            "executors did not stop after being asked to; abandoning them"
        );
    }
}

/// Runs `join` (which waits for threads) on a thread of its own and waits for it at most
/// `timeout`; `None` if it is still waiting then, and then it is left to finish, or not.
///
/// Why bound it? Stopping can only ask an executor to stop; one that never wakes (a bug,
/// or a wake-up lost inside the runtime) would otherwise hang the caller for good: a test
/// for ever, the binary until its service manager kills it.
fn join_within<T: Send + 'static>(
    timeout: Duration,
    join: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("tailsrv-join".into())
        .spawn(move || {
            let _ = tx.send(join());
        });
    match spawned {
        Ok(_) => rx.recv_timeout(timeout).ok(),
        Err(e) => {
            warn!(error = %e, "cannot start a thread to wait for the executors");
            None
        }
    }
}

/// A flag one thread sets and another can await.
#[derive(Clone, Default)]
struct Latch(Arc<Mutex<(bool, Option<Waker>)>>);

impl Latch {
    fn set(&self) {
        let waker = match self.0.lock() {
            Ok(mut state) => {
                state.0 = true;
                state.1.take()
            }
            Err(_) => None,
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    async fn wait(&self) {
        future::poll_fn(|cx| match self.0.lock() {
            Ok(mut state) if !state.0 => {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        })
        .await
    }
}

/// Sets its latch when dropped.
struct SetOnDrop(Latch);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// `path` made absolute, with its directory's symbolic links and `..` resolved when the
/// directory can be; the file itself need not exist.
fn full_path(path: &std::path::Path) -> std::path::PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    match (dir.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

/// Resolves the client limits from the options and the descriptor limit.
fn limits(opts: &Options, descriptor_limit: u64, shards: usize) -> Limits {
    let fits = Limits::default_max_clients(descriptor_limit, shards);
    let max_clients = opts.max_clients.map_or(fits, |n| n as usize);
    let max_per_peer = match opts.max_clients_per_ip {
        0 => None,
        n => Some(n as usize),
    };
    Limits {
        allow: opts.allow.clone(),
        max_clients,
        max_per_peer,
        ipv6_prefix: opts.ipv6_prefix,
        descriptor_limit,
    }
}

/// Descriptors start-up may take, besides the clients': about 10 per shard (its executor's
/// rings and eventfds, its listener, its set of full sockets) and 16 for the rest (the
/// watcher's executor, inotify, the file, the signalfd, eventfds, the standard streams).
///
/// Why check at all? Under a smaller limit glommio cannot build every executor, and then
/// either a shard fails to start or start-up waits for good in glommio's start latch (a
/// limit of 14 with two shards hung; 17 to 21 failed; 22 to 24 hung again). Measured here,
/// the smallest limit a server starts under is 15 with one shard, 25 with two, 33 with three
/// and 40 with four; this asks for a few more than that, as the peak during start-up moves
/// with the threads' timing. A server under such a limit could serve a few clients at most.
fn descriptors_to_start(shards: usize) -> u64 {
    16 + 10 * shards as u64
}

/// Refuses to start under a descriptor limit too small to start every executor.
fn check_descriptors(limit: u64, shards: usize) -> Result<(), Error> {
    let need = descriptors_to_start(shards);
    if limit >= need {
        return Ok(());
    }
    Err(Error::Config(format!(
        "the descriptor limit (RLIMIT_NOFILE, `ulimit -n`) is {limit}; starting {shards} shard(s) \
         takes at least {need}, and every client one more (raise it, e.g. LimitNOFILE=65536 in \
         a systemd unit, or lower --shards)"
    )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_descriptors_to_start_every_executor_is_refused_naming_the_limit() {
        assert!(check_descriptors(1 << 20, 64).is_ok());
        assert!(check_descriptors(26, 1).is_ok());
        for (limit, shards) in [(14, 2), (25, 1), (24, 2), (39, 4)] {
            let e = check_descriptors(limit, shards).unwrap_err().to_string();
            assert!(
                e.contains(&format!("RLIMIT_NOFILE, `ulimit -n`) is {limit};")),
                "{e}"
            );
            assert!(e.contains(&format!("starting {shards} shard(s)")), "{e}");
        }
    }
    use std::path::Path;

    #[test]
    fn full_path_resolves_the_directory_of_a_missing_file() {
        let here = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(
            full_path(Path::new("no-such.log")),
            here.join("no-such.log")
        );
        assert_eq!(
            full_path(Path::new("./src/../no-such.log")),
            here.join("no-such.log")
        );
        // A directory that does not exist either: absolute, unresolved.
        assert_eq!(
            full_path(Path::new("no-such-dir/x.log")),
            here.join("no-such-dir/x.log")
        );
    }
}
