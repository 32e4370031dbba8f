//! Reading the server's Prometheus endpoint from tests: find its address in the log,
//! scrape it, add up samples.

use super::{field, Server, PATIENCE};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

impl Server {
    /// The address the server's log says it serves metrics on (start it with
    /// `--metrics 127.0.0.1:0`).
    #[track_caller]
    pub fn metrics_at(&self) -> String {
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
        let addr = self.metrics_at();
        let mut stream = TcpStream::connect(&addr).expect("connecting to metrics");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading the metrics response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        Samples(
            body.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }
}

/// One scrape's samples.
#[derive(Debug)]
pub struct Samples(pub HashMap<String, f64>);

impl Samples {
    /// The sum of every sample whose name (with labels) starts with `prefix`.
    pub fn sum(&self, prefix: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v as u64)
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
