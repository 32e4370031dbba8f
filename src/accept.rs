//! A shard's accept loop: starts the shard, accepts connections on its listener, admits
//! them and hands each to a client task, then stops listening and winds the shard down.
//!
//! Why apart from the shard? The shard is what its clients share (the file's size, the
//! phase, who waits for what); accepting is what makes clients. With the loop here, data
//! flows one way: server → accept → client → shard → pace.

use crate::admission::{Admission, Backoff};
use crate::client;
use crate::shard::{self, ShardSetup, Started};
use crate::state::{Audience, Phase, Published};
use crate::stats::ShardStats;
use crate::sys;
use futures_lite::future;
use glommio::timer::Timer;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error};

/// How long to pause accepting after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Runs one shard until it stops: starts it, says it is ready, accepts clients until the
/// file is gone or the server stops, then winds it down.
pub async fn run(
    setup: ShardSetup,
    published: Arc<Published>,
    audience: Arc<Audience>,
    header_timeout: Duration,
    admission: Arc<Admission>,
    ready: impl FnOnce(),
) {
    let index = setup.index;
    let Started {
        shard,
        listener,
        listening,
    } = shard::start(setup, published, audience, header_timeout).await;
    ready();
    debug!(shard = index, "accepting");
    let stop = shard.until_phase(Phase::Draining);
    futures_lite::pin!(stop);
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            (&mut stop).await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                ShardStats::add(&shard.stats.accepted, 1);
                // Why decide before reading anything? A peer that may not connect, or that
                // would go over a limit, then costs one accept and one close, and never a
                // task or a header timer.
                let peer = stream.peer_addr().ok();
                match admission.admit(peer.map(|p| p.ip())) {
                    Ok(ticket) => {
                        glommio::spawn_local(client::serve(shard.clone(), stream, ticket)).detach();
                    }
                    Err(why) => {
                        let peer = peer.map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()));
                        let peer = peer.map_or("unknown".to_string(), |p| p.to_string());
                        admission.refused(index, &shard.stats, peer, why);
                        drop(stream);
                    }
                }
            }
            Some(Err(e)) => {
                // Out of descriptors or memory: the connection waits in the backlog; pause
                // rather than spin on it. The admission state logs it without flooding.
                let e = io::Error::from(e);
                let backoff = admission.accept_failed(index, &shard.stats, &e);
                if backoff == Backoff::Start {
                    glommio::spawn_local(admission.clone().until_shortage_ends()).detach();
                }
                if backoff != Backoff::No {
                    Timer::new(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    // Why not just drop the listener? Its last accept was queued in the shard's io_uring,
    // and the kernel keeps a reference to the socket until that accept is cancelled, which
    // can be after the process has exited (the ring is torn down in the background), so a
    // server restarted at once could not bind the port. Shutting the socket down takes it
    // out of LISTEN now, whoever still holds it (docs/benchmarks.md, "Where the constants
    // come from").
    match &listening {
        Ok(fd) => {
            if let Err(e) = sys::stop_listening(fd.as_fd()) {
                error!(shard = index, error = %e, "cannot stop listening");
            }
        }
        Err(e) => error!(shard = index, error = %e, "cannot stop listening: no descriptor for it"),
    }
    drop(listener);
    drop(listening);

    shard.wind_down().await;
}
