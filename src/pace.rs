//! Pacing: how much one client may be sent at a time, and how a task gives every other
//! task on its shard, and the shard's I/O, a turn. Clients catching up and the shard's
//! doorbell both pace themselves this way.

use glommio::timer::Timer;
use std::time::Duration;

/// The most one sendfile call may send before the client goes to the back of the queue.
///
/// Why bound it? A client catching up on a large file would otherwise keep its shard busy
/// for as long as its socket keeps draining, while caught-up clients wait for a 64-byte
/// append. Most calls stop short of it anyway, when the socket's buffer is full (Linux lets
/// a TCP send buffer grow to 4 MiB by default); the bound matters for a reader that drains
/// as fast as the shard sends. Why 4 MiB? Smaller chunks each end in a turn-taking timer
/// and cost twice the CPU per GiB; from 1 MiB up most calls end on a full socket instead
/// (docs/benchmarks.md, "Where the constants come from").
pub const CHUNK: usize = 4 << 20;

/// How long a client that just sent a chunk sleeps before its next one: long enough that
/// its timer is still pending when first polled (which takes well under a microsecond), so
/// the task really leaves the run queue.
const TURN: Duration = Duration::from_micros(1);

/// Lets every other client on the shard, and the shard's I/O, have a turn.
///
/// Why a timer and not `yield_now`? A task that yields stays runnable, and glommio only
/// looks at completed I/O (drained sockets, doorbells, new connections) once nothing is
/// runnable or its preemption timer fires (100 ms by default). Clients catching up with fast
/// readers would then hold off a caught-up client's 64-byte append for up to 100 ms. A
/// timer that has not expired when first polled takes the task off the run queue; glommio
/// fires it from its reactor, so each round of catch-up chunks is followed by an I/O pass.
/// (A timer that has already expired would not do: glommio's timer completes at once
/// without yielding. A 1 ms preemption timer did the same job but made glommio 0.9 lose
/// wake-ups; docs/benchmarks.md, "Where the constants come from".)
pub async fn take_turns() {
    Timer::new(TURN).await;
}
