//! One client's task: read its request (`request`), answer it (`answer` for HTTP), then send
//! it the file from its offset for as long as it stays connected.

use crate::addr::Peer;
use crate::admission::Ticket;
use crate::answer::{self, answer, Answer};
use crate::header::Start;
use crate::lines;
use crate::pace::{take_turns, CHUNK};
use crate::request::{self, Request};
use crate::shard::{Connection, Shard};
use crate::state::{Ending, Phase, Reader};
use crate::stats::{ClientStart, Protocol, ShardStats};
use crate::sys;
use futures_lite::future::{self, poll_fn};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use std::future::Future;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;
use tracing::{debug, info, warn};

/// After sending to a client that has half-closed, check this long after that it is still
/// there. Its reset, if it closed, has arrived by then on any sane network.
const VERIFY_AFTER: Duration = Duration::from_secs(1);

/// How often a half-closed client with nothing to send is checked for a connection that
/// keepalive has closed.
const RECHECK_QUIET: Duration = Duration::from_secs(30);

/// TCP keepalive: first probe after this long idle, then every interval, up to count probes.
const KEEPALIVE: (i32, i32, i32) = (60, 10, 6);

/// Serves one accepted connection to its end. Never fails: a client's trouble is its own.
///
/// `ticket` is the client's place under the server's limits, given back when this returns.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, ticket: Ticket) {
    // Why a parameter and not a wrapping `async` block in the accept loop? Such a block keeps
    // the whole client future twice in its own state: 0.8 KiB more per connected client.
    let _ticket = ticket;
    let peer = Peer(stream.peer_addr().ok());
    let mut conn = Connection::new(shard.attach(), stream);
    let fd = conn.socket();
    if let Err(e) = sys::set_nonblocking(fd) {
        // Without it one stalled client could block the shard: refuse to serve it.
        warn!(shard = shard.index, client = conn.id(), %peer, error = %e, "cannot make the socket non-blocking");
        return;
    }
    if let Err(e) = conn
        .stream()
        .set_nodelay(true)
        .map_err(io::Error::from)
        .and_then(|_| {
            let (idle, interval, count) = KEEPALIVE;
            sys::set_keepalive(fd, idle, interval, count)
        })
    {
        debug!(shard = shard.index, client = conn.id(), error = %e, "setting socket options");
    }

    let Some(request) = request::read(&shard, &mut conn, peer).await else {
        close(conn.socket());
        return;
    };
    let end = match request {
        Request::Raw { start, input_open } => {
            let _serving = shard.stats.serving(Protocol::Raw);
            let size = shard.fresh_size();
            // The generation the offset is resolved against: the client reads it to its end.
            let reader = shard.current().map(Reader::new);
            let Some(offset) = resolve(&shard, &conn, peer, start, size, reader.as_ref()).await
            else {
                close(conn.socket());
                return;
            };
            debug!(shard = shard.index, client = conn.id(), %peer, ?start, offset, "client streaming");
            conn.started(ClientStart {
                peer: peer.0,
                offset,
                http: false,
            });
            stream_file(&shard, &mut conn, offset, input_open, false, reader).await
        }
        Request::Http { route, host, html } => {
            let _serving = shard.stats.serving(Protocol::Http);
            let (start, head_only) = match answer(route, host.as_deref(), html, &shard.page) {
                Answer::Stream { start, head_only } => (start, head_only),
                Answer::Complete { status, response } => {
                    answer::send_complete(&shard, &conn, peer, status, &response).await;
                    close(conn.socket());
                    return;
                }
            };
            let size = shard.fresh_size();
            let reader = shard.current().map(Reader::new);
            let resolved = resolve(&shard, &conn, peer, start, size, reader.as_ref()).await;
            let file = reader.as_ref().map(|g| g.id());
            let began = answer::begin_stream(&shard, &conn, peer, resolved, size, file, head_only);
            let Some(offset) = began.await else {
                close(conn.socket());
                return;
            };
            debug!(shard = shard.index, client = conn.id(), %peer, ?start, offset, "client streaming (http)");
            conn.started(ClientStart {
                peer: peer.0,
                offset,
                http: true,
            });
            // Why treat a FIN as the end? An HTTP client does not half-close to keep
            // reading; its FIN means it is gone, so its slot is freed now rather than at
            // the next send's reset.
            stream_file(&shard, &mut conn, offset, true, true, reader).await
        }
    };
    conn.forget_room();
    debug!(shard = shard.index, client = conn.id(), %peer, end = %end, "client done");
    if shard.phase() == Phase::Aborting || matches!(end, End::Truncated) {
        abort(conn.socket());
    } else {
        close(conn.socket());
    }
}

/// Resolves a start to an offset in a file of `size` bytes; `None` (logged) if reading the
/// file for a line count failed or the server is closing meanwhile.
///
/// Why on the shard's blocking thread? Counting lines reads the file backwards, up to
/// `lines::MAX_SCAN` bytes; from a cold page cache that is disk reads, which would stall
/// every client of the shard if made here. glommio keeps one such thread per executor
/// anyway; the shard goes on serving while it reads.
async fn resolve(
    shard: &Rc<Shard>,
    conn: &Connection,
    peer: Peer,
    start: Start,
    size: u64,
    generation: Option<&Reader>,
) -> Option<u64> {
    let n = match start {
        Start::Lines(n) if n > 0 && size > 0 => n,
        Start::Lines(0) => return Some(size),
        Start::Lines(_) => return Some(0),
        other => return other.resolve(size),
    };
    // The file of the generation the start is resolved in, not whatever FILE is by the time
    // the scan runs.
    let file = generation.map(|g| g.shared_file());
    let scan = glommio::executor().spawn_blocking(move || {
        let Some(file) = file else {
            return Ok(lines::Found {
                offset: 0,
                cut_short: false,
            });
        };
        lines::start_of_last(n, size, lines::MAX_SCAN, |buf, at| {
            file.read_exact_at(buf, at)
        })
    });
    let closing = async {
        shard.until_phase(Phase::Closing).await;
        Err(io::Error::other("server closing"))
    };
    match future::or(scan, closing).await {
        Ok(found) => {
            if found.cut_short {
                info!(
                    shard = shard.index, client = conn.id(), %peer, lines = n, offset = found.offset,
                    max_scan = lines::MAX_SCAN,
                    "the lines asked for reach further back than the scan looks; starting mid-line"
                );
            }
            Some(found.offset)
        }
        Err(e) => {
            warn!(shard = shard.index, client = conn.id(), %peer, error = %e, "cannot count lines; closing connection");
            None
        }
    }
}

/// Why a client's stream ended.
enum End {
    Shutdown,
    Drained,
    /// The file it read was rotated away and the drain's time ran out.
    DrainOver,
    /// The file it read was truncated.
    Truncated,
    /// An HTTP client closed its sending side: it is gone.
    Closed,
    /// The connection failed: reset, broken pipe, timed out.
    Gone(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Shutdown => f.write_str("server shutting down"),
            End::Drained => f.write_str("sent all the file held before it went away"),
            End::DrainOver => f.write_str("the file went away and the drain's time ran out"),
            End::Truncated => f.write_str("the file was truncated"),
            End::Closed => f.write_str("client closed"),
            End::Gone(e) => write!(f, "connection lost: {e}"),
        }
    }
}

enum Woke {
    Changed,
    Input,
    InputClosed,
    Verify,
    Failed(io::Error),
}

/// Sends the file from `offset` on, as it grows, until the client goes, the server stops or
/// the generation it reads ends. With `fin_ends`, the client's end of input is its end
/// (HTTP). `reader` is the generation; `None` while FILE does not exist, and then the
/// client reads the first file that appears under its name.
async fn stream_file(
    shard: &Shard,
    conn: &mut Connection,
    mut offset: u64,
    mut input_open: bool,
    fin_ends: bool,
    mut reader: Option<Reader>,
) -> End {
    conn.set_offset(offset);
    // Sent data and not yet checked that the client is still there. Only a half-closed client
    // needs the check (an open input shows its reset at once), but data sent just before its
    // input closed counts too: its reset may be the one still on its way.
    let mut unverified = false;
    let mut verify: Option<Timer> = None;
    // The armed check is the slow one, for a client sent nothing since the last check.
    let mut quiet = false;
    loop {
        let phase = shard.phase();
        if phase >= Phase::Closing {
            return End::Shutdown;
        }
        if reader.is_none() {
            reader = shard.current().map(Reader::new);
        }
        // Why read the size of a generation that is no longer current from the generation
        // itself? Its size is final, and the shard keeps only the current one's.
        let (size, file, current) = match &reader {
            None => (0, None, true),
            Some(r) => match r.ending() {
                Ending::Reset => return End::Truncated,
                Ending::Closed => return End::DrainOver,
                Ending::Draining if offset >= r.size() => return End::Drained,
                _ if shard.is_current(r) => (shard.size(), Some(r.file()), true),
                _ => (r.size(), Some(r.file()), false),
            },
        };
        let file = match file {
            Some(file) if offset < size => file,
            _ => {
                if phase == Phase::Draining {
                    return End::Drained;
                }
                if !input_open && (verify.is_none() || (unverified && quiet)) {
                    // Why look when nothing was sent? A client that left before the file
                    // reached its offset is found gone by keepalive, which closes the
                    // connection in the kernel but wakes nobody here. Data sent since
                    // brings the look forward.
                    quiet = !unverified;
                    let after = if unverified {
                        VERIFY_AFTER
                    } else {
                        RECHECK_QUIET
                    };
                    verify = Some(Timer::new(after));
                }
                // Only a client of the shard's current file can be sent to by the shard.
                let direct = input_open && current;
                let woke = wait_for_news(shard, conn, input_open, direct, verify.as_mut()).await;
                // The shard may have sent to the socket directly while this task slept.
                offset = conn.offset().unwrap_or(offset);
                match woke {
                    Woke::Changed => {}
                    // A client that keeps sending gets its input dropped in turns, like
                    // any other work on the shard.
                    Woke::Input => take_turns().await,
                    Woke::InputClosed if fin_ends => return End::Closed,
                    Woke::InputClosed => {
                        input_open = false;
                        // The shard may have sent to it directly (only open clients get
                        // that), and the reset those bytes drew may still be on its way.
                        unverified = true;
                    }
                    Woke::Verify => {
                        verify = None;
                        unverified = false;
                        ShardStats::add(&shard.stats.liveness_checks, 1);
                        if sys::tcp_is_closed(conn.socket()).unwrap_or(true) {
                            return End::Gone(io::ErrorKind::ConnectionReset.into());
                        }
                    }
                    Woke::Failed(e) => return End::Gone(e),
                }
                continue;
            }
        };
        let count = usize::try_from(size - offset)
            .unwrap_or(usize::MAX)
            .min(CHUNK);
        let full = match sys::sendfile(conn.socket(), file, offset, count) {
            Ok(0) => {
                // The file is shorter than the watcher said: it was truncated, and the watcher
                // is about to say so. Send nothing; wait for its word.
                if let Woke::Failed(e) = wait_for_news(shard, conn, false, false, None).await {
                    return End::Gone(e);
                }
                false
            }
            Ok(n) => {
                offset += n as u64;
                conn.set_offset(offset);
                ShardStats::add(&shard.stats.bytes_sent, n as u64);
                unverified = true;
                if n == count && offset < shard.size() {
                    // Caught up, the client waits for news anyway; only one with more to
                    // send must step aside for the others.
                    take_turns().await;
                }
                // Why not wait for room after a short send? Only a refusal (EAGAIN) is sure to
                // be followed by the kernel's "writable" edge; a send cut short for another
                // reason (early in a connection, while its buffer grows) may leave room and
                // no edge to come. So send until refused, as an epoll server does.
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(e) => return End::Gone(e),
        };
        if full {
            conn.until_room(reader.as_deref()).await;
        }
    }
}

/// Waits, with nothing to send, for the shard's next change. Meanwhile it discards what the
/// client sends, which also tells at once when the client resets the connection. With
/// `direct`, the shard may send the client its appends itself (see `Shard::bump`).
async fn wait_for_news(
    shard: &Shard,
    conn: &mut Connection,
    input_open: bool,
    direct: bool,
    mut verify: Option<&mut Timer>,
) -> Woke {
    let seen = shard.changes();
    let mut junk = [0u8; 64];
    // Why only with input open? A half-closed client's reset shows only in the check that
    // follows a send, which its task must arm; the shard cannot do that for it.
    let direct = input_open && direct;
    let woke = poll_fn(|cx| {
        if shard.changes() != seen {
            return Poll::Ready(Woke::Changed);
        }
        conn.wait_growth(cx.waker(), direct);
        if input_open {
            match conn.poll_read(cx, &mut junk) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Woke::InputClosed),
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(match drain(conn.socket()) {
                        Ok(true) => Woke::Input,
                        Ok(false) => Woke::InputClosed,
                        Err(e) => Woke::Failed(e),
                    })
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Woke::Failed(e)),
                Poll::Pending => {}
            }
        }
        if let Some(timer) = verify.as_mut() {
            if Pin::new(&mut **timer).poll(cx).is_ready() {
                return Poll::Ready(Woke::Verify);
            }
        }
        Poll::Pending
    })
    .await;
    // From here on the task sends for itself: the shard must not send behind its back.
    conn.stop_waiting();
    woke
}

/// Discards pending input; `Ok(false)` if the client has closed its sending side.
fn drain(sock: BorrowedFd<'_>) -> io::Result<bool> {
    match sys::discard_input(sock) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}

/// Ends the connection with a reset, discarding whatever is still queued to send.
///
/// Why, when the file shrank? sendfile queues references to the file's cached pages, not
/// copies. Truncation zeroes the part of the page cache past the new end in place, so bytes
/// queued before it may now read as zeroes: sending them would hand the client bytes that
/// were never the file's at that offset. A reset drops them, and tells the client that the
/// stream did not end cleanly. (Bytes the kernel already sent are beyond anyone's reach; on
/// the same host that includes what sits unread in the client's receive buffer.)
fn abort(sock: BorrowedFd<'_>) {
    let _ = sys::set_linger_zero(sock);
}

/// Ends the connection in order: FIN after everything queued, then close.
///
/// Why discard input first? Closing a socket with unread input makes the kernel send a reset
/// instead of a FIN, and a reset can make the client lose data it has not read yet.
fn close(sock: BorrowedFd<'_>) {
    let _ = sys::shutdown_write(sock);
    for _ in 0..16 {
        if !matches!(sys::discard_input(sock), Ok(n) if n > 0) {
            break;
        }
    }
}
