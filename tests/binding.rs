//! Which addresses the listeners take: `--bind ::1` only IPv6 loopback, no `--bind` both
//! families; and a port that is free again the moment the server has exited. (The IPv4 fallback where the system has no IPv6 is a unit test in src/addr.rs:
//! IPv6 cannot be taken away from a network namespace, `disable_ipv6` still lets `::` bind.)

use crate::common::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};

fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// Whether a connection to `addr` is refused (nothing listens there).
fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, PATIENCE) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

#[test]
fn bind_ipv6_loopback_serves_ipv6_clients_only() {
    if !has_ipv6_loopback() {
        skip("no IPv6 loopback here");
        return;
    }
    let server = Server::builder()
        .contents(b"over IPv6\n")
        .arg("--bind")
        .arg("::1")
        .start();
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, server.port()));
    let mut client = Client::connect_to(v6);
    client.send(b"0\n");
    client.expect_bytes(b"over IPv6\n", PATIENCE);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
    assert!(refused(v4), "--bind ::1 also took IPv4 clients");
}

#[test]
fn without_bind_both_families_are_served() {
    let server = Server::start(b"either way\n");
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
    let mut client = Client::connect_to(v4);
    client.send(b"0\n");
    client.expect_bytes(b"either way\n", PATIENCE);
    if has_ipv6_loopback() {
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, server.port()));
        let mut client = Client::connect_to(v6);
        client.send(b"0\n");
        client.expect_bytes(b"either way\n", PATIENCE);
    }
}

#[test]
fn bind_ipv4_loopback_serves_ipv4_clients_only() {
    let server = Server::builder()
        .contents(b"over IPv4\n")
        .arg("--bind")
        .arg("127.0.0.1")
        .start();
    let mut client = server.connect(b"0\n");
    client.expect_bytes(b"over IPv4\n", PATIENCE);
    if has_ipv6_loopback() {
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, server.port()));
        assert!(refused(v6), "--bind 127.0.0.1 also took IPv6 clients");
    }
}

#[test]
fn a_server_restarted_at_once_binds_its_port_every_time() {
    // Why? A server's listeners used to stay in LISTEN for up to 140 ms after it exited
    // (an accept still queued in its io_uring), so a supervisor's immediate restart failed
    // with "address in use" a few times in thirty.
    const RESTARTS: usize = 100;
    const SIZE: u64 = 8 << 20;
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append_pattern(&path, 0, SIZE);
    let mut server = Server::builder().serve(&path).start();
    let port = server.port();
    for restart in 1..=RESTARTS {
        // Five clients catching up: each has had the start of the file, none all of it.
        let mut clients: Vec<Client> = (0..5).map(|_| server.connect(b"0\n")).collect();
        for c in &mut clients {
            c.expect_pattern(0, 4096, PATIENCE);
        }
        server.sigterm();
        server.expect_exit(0, PATIENCE);
        // The port is free now, for a bind that does not wait (std's sets SO_REUSEADDR and
        // not SO_REUSEPORT, as tailsrv's own first bind does): nothing listens on it.
        let probe = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
            .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)));
        if let Err(e) = probe {
            panic!("restart {restart}: port {port} still in use after the server exited: {e}");
        }
        drop(probe);
        drop(clients);
        server = match Server::builder().serve(&path).port(port).try_start() {
            Ok(server) => server,
            Err(log) => panic!("restart {restart} did not bind port {port}:\n{log}"),
        };
    }
}
