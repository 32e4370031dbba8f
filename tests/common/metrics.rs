//! Reading the server's Prometheus endpoint from tests: where it is, one request, the
//! samples of a scrape. The one place tests talk to the metrics endpoint.

use super::{field, Server, PATIENCE};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

impl Server {
    /// The metrics endpoint's address (start the server with `--metrics 127.0.0.1:0`): the
    /// in-process server says it; the binary's log line gives it, as it gives the port.
    #[track_caller]
    pub fn metrics_at(&self) -> String {
        if let Some(at) = self.in_process_metrics() {
            return at
                .expect("an in-process server started without --metrics")
                .to_string();
        }
        let line = self.logs().wait_for("the metrics address", PATIENCE, |l| {
            l.contains("serving metrics at")
        });
        field(&line, "addr")
            .expect("addr= in the metrics line")
            .to_string()
    }

    /// Scrapes the metrics: every sample, keyed by name with labels.
    #[track_caller]
    pub fn metrics(&self) -> Samples {
        scrape(&self.metrics_at())
    }
}

/// Sends `request` as it is to `addr` and returns the response's head (status line and
/// headers) and body, read until the server closes the connection.
#[track_caller]
pub fn metrics_request(addr: &str, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to metrics");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the metrics response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_string(), body.to_string())
}

/// `GET path` at `addr`: the status line and the body.
#[track_caller]
pub fn metrics_get(addr: &str, path: &str) -> (String, String) {
    let (head, body) = metrics_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"));
    (head.lines().next().unwrap_or_default().to_string(), body)
}

/// Scrapes `GET /metrics` at `addr` and parses the samples; a line that is not a sample
/// fails the test.
#[track_caller]
pub fn scrape(addr: &str) -> Samples {
    let (status, body) = metrics_get(addr, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    Samples(
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("bad sample line {l:?}"));
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}"));
                (name.to_string(), value)
            })
            .collect(),
    )
}

/// One scrape's samples.
#[derive(Debug)]
pub struct Samples(pub HashMap<String, f64>);

impl Samples {
    /// The sum of every sample whose name (with labels) starts with `prefix`.
    pub fn sum(&self, prefix: &str) -> u64 {
        self.total(prefix) as u64
    }

    /// The same, unrounded.
    pub fn total(&self, prefix: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// The sample named exactly `series` (with its labels, if any), if there is one.
    pub fn get(&self, series: &str) -> Option<u64> {
        self.0.get(series).map(|v| *v as u64)
    }

    /// `tailsrv_clients_rejected_total` for one reason.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.sum(&format!(
            "tailsrv_clients_rejected_total{{reason=\"{reason}\"}}"
        ))
    }
}

impl std::ops::Index<&str> for Samples {
    type Output = f64;

    #[track_caller]
    fn index(&self, series: &str) -> &f64 {
        self.0
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series} in {:?}", self.0))
    }
}
