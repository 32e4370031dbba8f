//! Which addresses the listeners take: `--bind ::1` only IPv6 loopback, no `--bind` both
//! families. (The IPv4 fallback where the system has no IPv6 is a unit test in src/addr.rs:
//! IPv6 cannot be taken away from a network namespace, `disable_ipv6` still lets `::` bind.)

use crate::common::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

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
        eprintln!("note: no IPv6 loopback here; skipping");
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
