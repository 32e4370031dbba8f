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
        .args(["--max-clients", "3", "--max-clients-per-ip", "0"])
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    assert_eq!(field(&limits_line(&server), "max_clients"), Some("3"));
    let mut held: Vec<Client> = (0..3).map(|_| served(&server)).collect();
    for _ in 0..5 {
        let mut c = Client::connect(server.port());
        c.try_send(b"0\n");
        c.expect_closed_without_data(PATIENCE);
    }
    let m = server.metrics();
    assert_eq!(m.rejected("max_clients"), 5, "{m:?}");
    assert_eq!(m.sum("tailsrv_clients_connected"), 3, "{m:?}");
    // Five refusals within the rate limit's interval: one line.
    assert_eq!(
        warnings(&server, "--max-clients reached"),
        1,
        "{}",
        server.logs().dump()
    );

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
    assert_eq!(
        field(&limits_line(&server), "max_clients_per_ip"),
        Some("2")
    );
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
fn the_default_per_peer_limit_is_half_of_max_clients() {
    let server = Server::builder()
        .contents(TEXT)
        .args(["--max-clients", "4"])
        .start();
    let line = limits_line(&server);
    assert_eq!(field(&line, "max_clients_per_ip"), Some("2"), "{line}");
    let _held = [served(&server), served(&server)];
    let mut over = Client::connect(server.port());
    over.expect_closed_without_data(PATIENCE);
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
    for _ in 0..3 {
        let mut v6 = Client::connect_to(v6_loopback(&server));
        v6.try_send(b"0\n");
        v6.expect_closed_without_data(PATIENCE);
    }
    let m = server.metrics();
    assert_eq!(m.rejected("not_allowed"), 3, "{m:?}");
    assert_eq!(
        warnings(&server, "peer not in --allow"),
        1,
        "{}",
        server.logs().dump()
    );

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
        .args(["--shards", "2", "--max-clients-per-ip", "0"])
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let line = limits_line(&server);
    assert_eq!(field(&line, "descriptor_limit"), Some("128"), "{line}");
    assert_eq!(field(&line, "max_clients"), Some("64"), "{line}");
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
        .args([
            "--shards",
            "2",
            "--max-clients",
            "1000",
            "--max-clients-per-ip",
            "0",
        ])
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let metrics = server.metrics_at();
    server
        .logs()
        .wait_for("a warning about --max-clients", PATIENCE, |l| {
            l.contains("WARN") && l.contains("more than the descriptor limit leaves room for")
        });
    let baseline = server.fd_count();
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
        poll_until(PATIENCE, || server.fd_count() <= baseline),
        "descriptors did not come back to {baseline}: {}",
        server.fd_count()
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
