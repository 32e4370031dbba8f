//! Client limits: --max-clients (set and derived from the descriptor limit),
//! --max-clients-per-ip, --allow, and what happens when descriptors run out anyway.

use crate::common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TEXT: &[u8] = b"hello\n";

fn v6_loopback(server: &Server) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], server.port()))
}

/// Connects from 127.0.0.1, sends a header and asserts the file arrives.
#[track_caller]
fn served(server: &Server) -> Client {
    let mut c = server.connect(b"0\n");
    c.expect_bytes(TEXT, PATIENCE);
    c
}

/// Resets the last of `held`, waits until the server counts `left` clients connected, then
/// takes the freed slot with a new served client.
#[track_caller]
fn reset_one_and_refill(server: &Server, held: &mut Vec<Client>, left: u64) {
    held.pop().expect("a held client").reset();
    assert!(
        poll_until(PATIENCE, || server
            .metrics()
            .sum("tailsrv_clients_connected")
            == left),
        "the reset client was not let go"
    );
    held.push(served(server));
}

/// The WARN lines that contain `what`.
fn warnings(server: &Server, what: &str) -> usize {
    server
        .logs()
        .lines()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains(what))
        .count()
}

/// How often a refusal of one kind may be logged (`ratelimit::LOG_EVERY` in the server).
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Asserts that the refusals made since `since` were logged as `what` once per [`LOG_EVERY`]:
/// once, when they all came within one interval (as they do, but on a machine too loaded to
/// make a few connections in 5 s). Waits for the first line: the server writes it before it
/// closes the connection, but the test's log reader is another thread, and may be behind.
#[track_caller]
fn expect_refusals_logged_once(server: &Server, what: &str, since: Instant) {
    let intervals = since.elapsed().as_millis() / LOG_EVERY.as_millis();
    server
        .logs()
        .wait_for(&format!("the warning {what:?}"), PATIENCE, |l| {
            l.contains("WARN") && l.contains(what)
        });
    let n = warnings(server, what);
    assert!(
        (1..=1 + intervals as usize).contains(&n),
        "{n} warnings {what:?} for refusals within {intervals} rate-limit intervals\n{}",
        server.logs().dump()
    );
}

/// Descriptor shortages so far, as the metrics count them.
fn shortages(server: &Server) -> u64 {
    server.metrics().sum("tailsrv_descriptor_shortages_total")
}

/// The start-up line that states the client limits.
fn limits_line(server: &Server) -> String {
    server
        .logs()
        .wait_for("stating the client limits", PATIENCE, |l| {
            l.contains("client limits")
        })
}

#[test]
fn over_max_clients_a_connection_is_closed_at_once_and_counted() {
    let server = Server::builder()
        .contents(TEXT)
        .args(["--max-clients", "3", "--metrics", "127.0.0.1:0"])
        .start();
    let m = server.metrics();
    assert_eq!(m.get("tailsrv_max_clients"), Some(3), "{m:?}");
    assert_eq!(m.get("tailsrv_max_clients_per_ip"), None, "{m:?}");
    let mut held: Vec<Client> = (0..3).map(|_| served(&server)).collect();
    let refusing = Instant::now();
    for _ in 0..5 {
        let mut c = Client::connect(server.port());
        c.try_send(b"0\n");
        c.expect_closed_without_data(PATIENCE);
    }
    let m = server.metrics();
    assert_eq!(m.rejected("max_clients"), 5, "{m:?}");
    assert_eq!(m.sum("tailsrv_clients_connected"), 3, "{m:?}");
    // Five refusals within the rate limit's interval: one line.
    expect_refusals_logged_once(&server, "--max-clients reached", refusing);

    // A slot comes back when its client goes.
    reset_one_and_refill(&server, &mut held, 2);
    server.append(b"more\n");
    for c in &mut held {
        c.expect_bytes(b"more\n", PATIENCE);
    }
}

#[test]
fn one_peer_cannot_take_more_than_max_clients_per_ip() {
    let server = Server::builder()
        .contents(TEXT)
        .args(["--max-clients-per-ip", "2", "--metrics", "127.0.0.1:0"])
        .start();
    assert_eq!(server.metrics().get("tailsrv_max_clients_per_ip"), Some(2));
    // 127.0.0.1 reaches the dual-stack listener as ::ffff:127.0.0.1: one peer either way.
    let mut held = vec![served(&server), served(&server)];
    let mut over = Client::connect(server.port());
    over.try_send(b"0\n");
    over.expect_closed_without_data(PATIENCE);
    // Another peer still gets in.
    let mut v6 = Client::connect_to(v6_loopback(&server));
    v6.send(b"0\n");
    v6.expect_bytes(TEXT, PATIENCE);
    let m = server.metrics();
    assert_eq!(m.rejected("max_clients_per_ip"), 1, "{m:?}");
    assert_eq!(m.rejected("max_clients"), 0, "{m:?}");
    let line = server.logs().wait_for("the refusal", PATIENCE, |l| {
        l.contains("--max-clients-per-ip reached")
    });
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    reset_one_and_refill(&server, &mut held, 2);
}

#[test]
fn without_max_clients_per_ip_one_peer_may_take_every_slot() {
    let server = Server::builder()
        .contents(TEXT)
        .args(["--max-clients", "4", "--metrics", "127.0.0.1:0"])
        .start();
    let _held: Vec<Client> = (0..4).map(|_| served(&server)).collect();
    // The fifth is over --max-clients, not over a per-peer limit.
    let mut over = Client::connect(server.port());
    over.expect_closed_without_data(PATIENCE);
    let m = server.metrics();
    assert_eq!(m.rejected("max_clients"), 1, "{m:?}");
    assert_eq!(m.rejected("max_clients_per_ip"), 0, "{m:?}");
}

/// Raises this process's soft descriptor limit to at least `want` (the hard limit too,
/// when allowed: root may); the servers it starts inherit it. Returns the soft limit now.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct to a pointer to a live local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: want.max(lim.rlim_cur),
        rlim_max: want.max(lim.rlim_max),
    };
    // SAFETY: setrlimit reads one rlimit struct from a pointer to a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return raised.rlim_cur;
    }
    // Not allowed to raise the hard limit: take what it allows.
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        lim.rlim_max
    } else {
        lim.rlim_cur
    }
}

#[test]
fn ten_thousand_clients_from_one_host_all_get_an_append_with_default_flags() {
    // Why? Fan-out from one host (a relay with many consumers, a load test, a NAT) is
    // normal; a per-peer default of 1,024 once closed every connection past the 1,024th.
    const CLIENTS: usize = 10_000;
    // The clients' descriptors here, the server's there, and room for the other tests.
    let nofile = raise_nofile(CLIENTS as u64 * 2 + 2048);
    assert!(
        nofile >= CLIENTS as u64 + 1024,
        "the descriptor limit is {nofile}, and cannot be raised for {CLIENTS} clients"
    );
    let server = Server::builder()
        .contents(TEXT)
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let start = TEXT.len().to_string() + "\n";
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(server.connect(start.as_bytes()));
    }
    // Every header resolved to the end of the file: the append is what each gets.
    assert!(
        poll_until(PATIENCE * 3, || server
            .metrics()
            .sum("tailsrv_clients_streaming")
            == CLIENTS as u64),
        "not every client got past its header: {:?}",
        server.metrics()
    );
    server.append(b"to all\n");
    for c in &mut clients {
        c.expect_bytes(b"to all\n", PATIENCE);
    }
    let m = server.metrics();
    assert_eq!(m.sum("tailsrv_clients_rejected_total"), 0, "{m:?}");
    assert_eq!(m.sum("tailsrv_clients_connected"), CLIENTS as u64, "{m:?}");
}

#[test]
fn allow_lets_in_only_the_listed_ranges() {
    // IPv4 peers of the dual-stack listener arrive as ::ffff:127.0.0.1 and match 127/8.
    let server = Server::builder()
        .contents(TEXT)
        .args(["--allow", "127.0.0.0/8", "--metrics", "127.0.0.1:0"])
        .start();
    assert_eq!(field(&limits_line(&server), "allow"), Some("127.0.0.0/8"));
    let _v4 = served(&server);
    let refusing = Instant::now();
    for _ in 0..3 {
        let mut v6 = Client::connect_to(v6_loopback(&server));
        v6.try_send(b"0\n");
        v6.expect_closed_without_data(PATIENCE);
    }
    let m = server.metrics();
    assert_eq!(m.rejected("not_allowed"), 3, "{m:?}");
    expect_refusals_logged_once(&server, "peer not in --allow", refusing);

    let server = Server::builder()
        .contents(TEXT)
        .args(["--allow", "::1", "--allow", "10.0.0.0/8"])
        .start();
    let mut v4 = server.connect(b"0\n");
    v4.expect_closed_without_data(PATIENCE);
    let mut v6 = Client::connect_to(v6_loopback(&server));
    v6.send(b"0\n");
    v6.expect_bytes(TEXT, PATIENCE);

    // A plain IPv4 listener: peers are IPv4 addresses, not mapped ones.
    let server = Server::builder()
        .contents(TEXT)
        .args(["--bind", "127.0.0.1", "--allow", "127.0.0.1"])
        .start();
    let _v4 = served(&server);
}

#[test]
fn the_default_max_clients_keeps_accept_from_running_out_of_descriptors() {
    // 128 descriptors and two shards: 64 are kept back, 64 clients may connect. The
    // predecessor's failure mode (300 clients under 128 descriptors) warned ten times a
    // second per shard; now the 65th client is simply refused.
    let server = Server::builder()
        .nofile(128)
        .contents(TEXT)
        .args(["--shards", "2", "--metrics", "127.0.0.1:0"])
        .start();
    let line = limits_line(&server);
    assert_eq!(field(&line, "descriptor_limit"), Some("128"), "{line}");
    let m = server.metrics();
    assert_eq!(m.get("tailsrv_max_clients"), Some(64), "{m:?}");
    let _held: Vec<Client> = (0..64).map(|_| served(&server)).collect();
    for _ in 0..20 {
        let mut c = Client::connect(server.port());
        c.expect_closed_without_data(PATIENCE);
    }
    let m = server.metrics();
    assert_eq!(m.rejected("max_clients"), 20, "{m:?}");
    assert_eq!(m.sum("tailsrv_accept_no_descriptor_total"), 0, "{m:?}");
    assert_eq!(warnings(&server, "out of descriptors:"), 0);
}

#[test]
fn running_out_of_descriptors_is_logged_once_at_start_and_once_at_the_end() {
    let server = Server::builder()
        .nofile(64)
        .contents(TEXT)
        .args(["--shards", "2", "--max-clients", "1000"])
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let metrics = server.metrics_at();
    server
        .logs()
        .wait_for("a warning about --max-clients", PATIENCE, |l| {
            l.contains("WARN") && l.contains("more than the descriptor limit leaves room for")
        });
    // A scrape first: the metrics endpoint, set up by the watcher after "listening", is
    // then up and waiting in accept. One that first asks the kernel for a connection in the
    // shortage gets EMFILE and warns "metrics: accept failed" (1 run in 10 beside two CPU
    // hogs), and its listener's duplicate would be missing from the baseline.
    assert_eq!(shortages(&server), 0, "a shortage before any client came");
    let baseline = server.settled_held_fds();
    let table = server.fd_table();
    // More clients than descriptors: the last ones wait in the listen backlog.
    let mut clients: Vec<Client> = (0..64).map(|_| server.connect(b"0\n")).collect();
    server
        .logs()
        .wait_for("the start of the shortage", PATIENCE, |l| {
            l.contains("WARN")
                && l.contains("out of descriptors:")
                && l.contains("descriptor_limit=64")
        });
    // Both shards retry ten times a second; for the next three seconds, that must not
    // show in the log (the reminder comes every five).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.logs().dump();
    assert_eq!(warnings(&server, "out of descriptors:"), 1, "{log}");
    assert_eq!(warnings(&server, "still out of descriptors"), 0, "{log}");
    assert_eq!(warnings(&server, "accept failed"), 0, "{log}");
    // Some clients wait in a listen backlog: nothing has reached them. Which ones depends on
    // how the two shards' accepts interleaved, so count them rather than name one.
    let waiting = clients.iter().filter(|c| nothing_arrived(c)).count();
    assert!(
        waiting >= 1,
        "every client was served: {}",
        server.logs().dump()
    );

    for c in clients.drain(..) {
        c.reset();
    }
    server
        .logs()
        .wait_for("the end of the shortage", PATIENCE, |l| {
            l.contains("descriptors available again")
        });
    assert!(
        poll_until(PATIENCE, || server.held_fds() <= baseline),
        "descriptors did not come back to {baseline}: {}\n{}",
        server.held_fds(),
        fd_changes(&table, &server.fd_table())
    );
    let _c = served(&server);
    let m = server.metrics();
    assert_eq!(
        m.sum("tailsrv_descriptor_shortages_total"),
        1,
        "{m:?} at {metrics}"
    );
    assert!(m.sum("tailsrv_accept_no_descriptor_total") > 0, "{m:?}");
    assert_eq!(
        warnings(&server, "out of descriptors:"),
        1,
        "{}",
        server.logs().dump()
    );
}

/// Whether nothing at all has arrived for this client yet (looked at without waiting).
fn nothing_arrived(client: &Client) -> bool {
    let stream = client.stream();
    stream.set_nonblocking(true).expect("non-blocking");
    let mut byte = [0u8; 1];
    let peeked = stream.peek(&mut byte);
    stream.set_nonblocking(false).expect("blocking again");
    matches!(peeked, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
