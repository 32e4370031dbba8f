//! Who may connect and how many: the `--allow` list ([`Cidr`]), the global and per-peer
//! client limits, and the warnings about connections turned away (or not accepted), rate
//! limited by [`crate::ratelimit`].
//!
//! One [`Admission`] is shared by every shard. A shard asks it about each connection it
//! accepts, before reading anything from it; a yes is a [`Ticket`] that the client's task
//! holds until it ends, and dropping the ticket gives the slot back.

use crate::cidr::{mask, point, Cidr};
use crate::ratelimit::{Exhaustion, RateLimit, Shortage, EXHAUSTION_QUIET, LOG_EVERY};
use crate::stats::{Rejection, ShardStats};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::{info, warn};

/// The IPv6 prefix length that groups peers when `--ipv6-prefix` is not given: a /64 is
/// what one site or one host usually gets, and a host can pick any address inside it.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The limits an operator set, resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Ranges whose peers may connect; empty means everyone.
    pub allow: Vec<Cidr>,
    /// Most clients connected at once over all shards.
    pub max_clients: usize,
    /// Most clients connected at once from one peer (one IPv4 address, one IPv6 prefix);
    /// `None` for no limit.
    pub max_per_peer: Option<usize>,
    /// The prefix length that makes IPv6 peers one peer.
    pub ipv6_prefix: u8,
    /// The soft descriptor limit (RLIMIT_NOFILE) tailsrv runs under, for the log.
    pub descriptor_limit: u64,
}

impl Limits {
    /// Descriptors kept back from `--max-clients` for tailsrv's own: listeners, io_uring
    /// rings and eventfds (about seven per executor), inotify, the signalfd, the file, the
    /// metrics listener and its scrapers. Never more than half the limit.
    pub fn reserve(descriptor_limit: u64, shards: usize) -> u64 {
        (64 + 8 * shards as u64).min(descriptor_limit / 2)
    }

    /// The default `--max-clients`: the descriptor limit less the reserve, at least 1.
    pub fn default_max_clients(descriptor_limit: u64, shards: usize) -> usize {
        let n = descriptor_limit.saturating_sub(Self::reserve(descriptor_limit, shards));
        usize::try_from(n).unwrap_or(usize::MAX).max(1)
    }

    /// The allow list as one line for the log.
    pub fn allow_text(&self) -> String {
        if self.allow.is_empty() {
            return "everyone".into();
        }
        let all: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        all.join(",")
    }

    /// Which peers count as one for the per-peer limit: one IPv4 address, or the IPv6
    /// addresses that share their first `ipv6_prefix` bits.
    pub fn peer_group(&self, ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => point(v4),
            v6 => point(v6) & mask(self.ipv6_prefix),
        }
    }

    /// Whether the allow list lets `ip` in.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// Stripes of the per-peer table: shards accepting at once rarely want the same lock.
const STRIPES: usize = 16;

/// The admission state every shard shares.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    clients: AtomicUsize,
    peers: Vec<Mutex<HashMap<u128, usize>>>,
    started: Instant,
    refusals: [RateLimit; Rejection::ALL.len()],
    accept_errors: RateLimit,
    exhaustion: Exhaustion,
}

/// A client's place under the limits; dropping it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    group: Option<u128>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let mut peers = self.admission.stripe(group);
            if let Some(n) = peers.get_mut(&group) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(&group);
                }
            }
        }
        self.admission.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            clients: AtomicUsize::new(0),
            peers: (0..STRIPES).map(|_| Mutex::default()).collect(),
            started: Instant::now(),
            refusals: std::array::from_fn(|_| RateLimit::new(LOG_EVERY)),
            accept_errors: RateLimit::new(LOG_EVERY),
            exhaustion: Exhaustion::new(LOG_EVERY),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Clients holding a ticket now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    fn stripe(&self, group: u128) -> std::sync::MutexGuard<'_, HashMap<u128, usize>> {
        let i = (group ^ (group >> 64)) as usize % STRIPES;
        // A poisoned stripe only means a panic elsewhere; its counts are still whole.
        self.peers[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides about a new connection from `peer` (`None` if its address is unknown).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Ticket, Rejection> {
        let limits = &self.limits;
        if !limits.allow.is_empty() && !peer.is_some_and(|ip| limits.allows(ip)) {
            return Err(Rejection::NotAllowed);
        }
        if self.clients.fetch_add(1, Ordering::AcqRel) >= limits.max_clients {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::MaxClients);
        }
        let group = match (limits.max_per_peer, peer) {
            (Some(most), Some(ip)) => {
                let group = limits.peer_group(ip);
                let mut peers = self.stripe(group);
                let n = peers.entry(group).or_insert(0);
                if *n >= most {
                    drop(peers);
                    self.clients.fetch_sub(1, Ordering::AcqRel);
                    return Err(Rejection::MaxClientsPerIp);
                }
                *n += 1;
                Some(group)
            }
            _ => None,
        };
        Ok(Ticket {
            admission: self.clone(),
            group,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Counts a refused connection and logs it, at most once per [`LOG_EVERY`] per reason.
    pub fn refused(
        &self,
        shard: usize,
        stats: &ShardStats,
        peer: impl fmt::Display,
        why: Rejection,
    ) {
        stats.reject(why);
        let Some(held) = self.refusals[why as usize].pass(self.now_ms()) else {
            return;
        };
        let reason = why.name();
        let limits = &self.limits;
        match why {
            Rejection::NotAllowed => warn!(
                shard, %peer, reason, allow = %limits.allow_text(), refused_unlogged = held,
                "peer not in --allow; closing connection"
            ),
            Rejection::MaxClients => warn!(
                shard, %peer, reason, max_clients = limits.max_clients, refused_unlogged = held,
                "--max-clients reached; closing new connection"
            ),
            Rejection::MaxClientsPerIp => warn!(
                shard, %peer, reason, max_clients_per_ip = limits.max_per_peer.unwrap_or(0),
                ipv6_prefix = limits.ipv6_prefix, refused_unlogged = held,
                "--max-clients-per-ip reached for this peer; closing new connection"
            ),
            _ => warn!(shard, %peer, reason, refused_unlogged = held, "closing connection"),
        }
    }

    /// Deals with a failed accept: counts it, logs it without flooding, and says whether
    /// the shard should pause before accepting again (it is short of descriptors or memory).
    ///
    /// A shortage of descriptors is logged when it starts, every [`LOG_EVERY`] while it
    /// lasts, and once when it ends (see [`Admission::until_shortage_ends`]); the first to see
    /// it returns `Backoff::Start`, and its shard should run that.
    pub fn accept_failed(&self, shard: usize, stats: &ShardStats, error: &io::Error) -> Backoff {
        let errno = error.raw_os_error();
        if !matches!(errno, Some(libc::EMFILE | libc::ENFILE)) {
            let resources = matches!(errno, Some(libc::ENOBUFS | libc::ENOMEM));
            if let Some(held) = self.accept_errors.pass(self.now_ms()) {
                warn!(shard, error = %error, failed_unlogged = held, "accept failed");
            }
            return if resources {
                Backoff::Pause
            } else {
                Backoff::No
            };
        }
        ShardStats::add(&stats.accept_no_descriptor, 1);
        let limits = &self.limits;
        let raise = if errno == Some(libc::ENFILE) {
            "the system's open-file table is full: raise fs.file-max, or lower --max-clients"
        } else {
            "raise the descriptor limit (LimitNOFILE= in a systemd unit, `ulimit -n`), or lower --max-clients"
        };
        match self.exhaustion.failed(self.now_ms()) {
            Shortage::Started => {
                ShardStats::add(&stats.descriptor_shortages, 1);
                warn!(
                    shard, error = %error, descriptor_limit = limits.descriptor_limit,
                    clients = self.clients(), max_clients = limits.max_clients,
                    "out of descriptors: new connections wait in the listen backlog; {raise}"
                );
                Backoff::Start
            }
            Shortage::Continues { failed, for_ms } => {
                warn!(
                    shard, error = %error, descriptor_limit = limits.descriptor_limit,
                    clients = self.clients(), failed_accepts = failed, for_secs = for_ms / 1000,
                    "still out of descriptors; {raise}"
                );
                Backoff::Pause
            }
            Shortage::Quiet => Backoff::Pause,
        }
    }

    /// Runs while a shortage of descriptors lasts and logs its end.
    pub async fn until_shortage_ends(self: Arc<Self>) {
        loop {
            glommio::timer::Timer::new(EXHAUSTION_QUIET / 2).await;
            if let Some((for_ms, failed)) = self.exhaustion.ended(self.now_ms(), EXHAUSTION_QUIET) {
                info!(
                    lasted_secs = for_ms as f64 / 1000.0,
                    failed_accepts = failed,
                    clients = self.clients(),
                    "descriptors available again; accepting"
                );
                return;
            }
            if !self.exhaustion.active() {
                return;
            }
        }
    }
}

/// What a shard does after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Accept again at once.
    No,
    /// Pause, then accept again.
    Pause,
    /// Pause, and start [`Admission::until_shortage_ends`]: this shard saw the shortage first.
    Start,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(allow: &[&str], max: usize, per_peer: Option<usize>, v6: u8) -> Limits {
        Limits {
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
            max_clients: max,
            max_per_peer: per_peer,
            ipv6_prefix: v6,
            descriptor_limit: 1024,
        }
    }

    #[test]
    fn peer_groups_take_ipv4_whole_and_ipv6_by_prefix() {
        let l = limits(&[], 10, Some(1), 64);
        assert_eq!(
            l.peer_group(ip("10.0.0.1")),
            l.peer_group(ip("::ffff:10.0.0.1"))
        );
        assert_ne!(l.peer_group(ip("10.0.0.1")), l.peer_group(ip("10.0.0.2")));
        assert_eq!(
            l.peer_group(ip("2001:db8:1:2::1")),
            l.peer_group(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            l.peer_group(ip("2001:db8:1:2::1")),
            l.peer_group(ip("2001:db8:1:3::1"))
        );
        let l = limits(&[], 10, Some(1), 128);
        assert_ne!(
            l.peer_group(ip("2001:db8::1")),
            l.peer_group(ip("2001:db8::2"))
        );
        let l = limits(&[], 10, Some(1), 48);
        assert_eq!(
            l.peer_group(ip("2001:db8:1:2::1")),
            l.peer_group(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn the_default_max_clients_leaves_a_reserve() {
        assert_eq!(Limits::default_max_clients(1 << 20, 2), (1 << 20) - 80);
        assert_eq!(Limits::default_max_clients(1024, 2), 1024 - 80);
        assert_eq!(Limits::default_max_clients(128, 2), 64);
        assert_eq!(Limits::default_max_clients(1, 2), 1);
    }

    #[test]
    fn admission_counts_and_refuses_by_reason() {
        let a = Arc::new(Admission::new(limits(
            &["10.0.0.0/8", "::1"],
            3,
            Some(2),
            64,
        )));
        assert_eq!(
            a.admit(Some(ip("192.0.2.1"))).unwrap_err(),
            Rejection::NotAllowed
        );
        assert_eq!(a.admit(None).unwrap_err(), Rejection::NotAllowed);
        let t1 = a.admit(Some(ip("10.0.0.1"))).unwrap();
        let t2 = a.admit(Some(ip("::ffff:10.0.0.1"))).unwrap();
        assert_eq!(
            a.admit(Some(ip("10.0.0.1"))).unwrap_err(),
            Rejection::MaxClientsPerIp
        );
        let t3 = a.admit(Some(ip("::1"))).unwrap();
        assert_eq!(
            a.admit(Some(ip("10.0.0.2"))).unwrap_err(),
            Rejection::MaxClients
        );
        assert_eq!(a.clients(), 3);
        drop(t1);
        assert_eq!(a.clients(), 2);
        let t4 = a.admit(Some(ip("10.0.0.1"))).unwrap();
        drop((t2, t3, t4));
        assert_eq!(a.clients(), 0);
        assert!(a.peers.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn without_a_per_peer_limit_only_the_total_counts() {
        let a = Arc::new(Admission::new(limits(&[], 2, None, 64)));
        let t = [
            a.admit(Some(ip("127.0.0.1"))).unwrap(),
            a.admit(None).unwrap(),
        ];
        assert_eq!(
            a.admit(Some(ip("127.0.0.1"))).unwrap_err(),
            Rejection::MaxClients
        );
        drop(t);
        assert_eq!(a.clients(), 0);
    }

    proptest! {
        #[test]
        fn tickets_never_exceed_the_limits_and_all_come_back(
            ops in proptest::collection::vec((0u8..6, any::<bool>()), 1..200),
            max in 1usize..8, per in 1usize..4,
        ) {
            let a = Arc::new(Admission::new(limits(&[], max, Some(per), 64)));
            let mut held: Vec<(u8, Ticket)> = Vec::new();
            for (peer, take) in ops {
                if take {
                    let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, peer));
                    let from_peer = held.iter().filter(|(p, _)| *p == peer).count();
                    match a.admit(Some(addr)) {
                        Ok(t) => {
                            prop_assert!(held.len() < max && from_peer < per);
                            held.push((peer, t));
                        }
                        Err(Rejection::MaxClients) => prop_assert_eq!(held.len(), max),
                        Err(Rejection::MaxClientsPerIp) => prop_assert_eq!(from_peer, per),
                        Err(other) => prop_assert!(false, "{:?}", other),
                    }
                } else if let Some(i) = held.iter().position(|(p, _)| *p == peer) {
                    held.swap_remove(i);
                }
                prop_assert_eq!(a.clients(), held.len());
            }
            held.clear();
            prop_assert_eq!(a.clients(), 0);
            prop_assert!(a.peers.iter().all(|s| s.lock().unwrap().is_empty()));
        }
    }
}
