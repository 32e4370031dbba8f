//! Listening addresses: host names for `--bind` and `--metrics`, IP literals, and the
//! error for a privileged port.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

/// The line tailsrv logs when it binds a host name, for `purpose` (clients or metrics).
fn resolved_line(server: &Server, purpose: &str) -> String {
    server
        .logs()
        .wait_for("saying what a host name resolved to", PATIENCE, |l| {
            l.contains("host name resolved") && l.contains(&format!("purpose=\"{purpose}\""))
        })
}

#[test]
fn bind_accepts_a_host_name_and_says_what_it_bound() {
    let server = Server::builder()
        .contents(b"by name\n")
        .arg("--bind")
        .arg("localhost")
        .start();
    let line = resolved_line(&server, "clients");
    assert_eq!(field(&line, "host"), Some("localhost"), "{line}");
    let bound: std::net::SocketAddr = field(&line, "bound")
        .expect("bound= in the line")
        .parse()
        .expect("an address");
    assert!(bound.ip().is_loopback(), "{line}");
    assert_eq!(bound.port(), server.port(), "{line}");
    let mut stream = TcpStream::connect(bound).expect("connecting to the bound address");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"0\n").unwrap();
    let mut got = [0u8; 8];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"by name\n");
}

#[test]
fn metrics_accepts_a_host_name() {
    let server = Server::builder()
        .arg("--metrics")
        .arg("localhost:0")
        .start();
    let line = resolved_line(&server, "metrics");
    let addr = server.metrics_at();
    assert_eq!(field(&line, "bound"), Some(addr.as_str()), "{line}");
    assert!(
        !addr.ends_with(":0"),
        "the bound port, not the one asked for: {addr}"
    );
    let (status, body) = metrics_get(&addr, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("tailsrv_shards "), "{body}");
}

#[test]
fn ip_literals_still_work_for_bind_and_metrics() {
    // IPv6 loopback where the system has it; IPv4 always.
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let (bind, metrics) = if v6 {
        ("::1", "[::1]:0")
    } else {
        eprintln!("note: no IPv6 loopback here; checking IPv4 literals only");
        ("127.0.0.1", "127.0.0.1:0")
    };
    let server = Server::builder()
        .contents(b"literal\n")
        .arg("--bind")
        .arg(bind)
        .arg("--metrics")
        .arg(metrics)
        .start();
    let listening = server.logs().wait_for("the listening line", PATIENCE, |l| {
        l.contains(" listening ")
    });
    let addr = field(&listening, "addr").expect("addr=");
    let mut stream = TcpStream::connect(addr).expect("connecting to the literal address");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"-8\n").unwrap();
    let mut got = [0u8; 8];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"literal\n");
    let metrics_at = server.metrics_at();
    if v6 {
        assert!(metrics_at.starts_with("[::1]:"), "{metrics_at}");
    }
    assert!(metrics_get(&metrics_at, "/metrics")
        .0
        .starts_with("HTTP/1.1 200"));
    assert!(
        !server.logs().dump().contains("host name resolved"),
        "a literal is not resolved"
    );
}

#[test]
fn a_privileged_port_refused_to_an_unprivileged_user_names_the_cause() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if !root || start <= 1 {
        skip(&format!(
            "needs root to drop to uid 65534, and privileged ports (below {start})"
        ));
        return;
    }
    let dir = TempDir::new();
    let file = dir.join("served.log");
    std::fs::write(&file, b"x").unwrap();
    // Port 1 is privileged wherever any port is; nobody listens on it in a test box.
    let run = run_program_to_exit(
        "prlimit",
        &[
            &PRLIMIT_AS_NOBODY[..],
            &[
                BIN,
                "-p",
                "1",
                "--bind",
                "127.0.0.1",
                file.to_str().unwrap(),
            ],
        ]
        .concat(),
        3 * PATIENCE,
    );
    assert_one_line_error(
        &run,
        1,
        "tailsrv: error: binding 127.0.0.1:1: permission denied: port 1 is a privileged port",
    );
    let stderr = &run.stderr;
    assert!(stderr.contains("CAP_NET_BIND_SERVICE"), "{stderr}");
}
