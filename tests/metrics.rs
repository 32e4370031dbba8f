//! The metrics endpoint: what it counts, how it answers HTTP, and that its text is valid
//! Prometheus exposition that follows Prometheus's naming conventions.

use crate::common::*;
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// Starts `builder`'s server with its metrics endpoint on a free loopback port; returns the
/// server and the endpoint's address.
fn start_with_metrics(builder: ServerBuilder) -> (Server, String) {
    let server = builder.arg("--metrics").arg("127.0.0.1:0").start();
    let addr = server.metrics_at();
    (server, addr)
}

/// The value of header `name` in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn metrics_match_what_clients_did() {
    const SIZE: u64 = 32 << 20;
    let dir = TempDir::new();
    let content = dir.join("content");
    append_pattern(&content, 0, SIZE);
    let (server, addr) = start_with_metrics(
        Server::builder()
            .in_process()
            .contents(&std::fs::read(&content).unwrap())
            .arg("--shards")
            .arg("2"),
    );

    // Three readers that take the whole file, one that never reads, one bad header.
    let mut readers: Vec<Client> = (0..3).map(|_| server.connect(b"0\n")).collect();
    let stalled = server.connect(b"0\n");
    let mut bad = server.connect(b"nope\n");
    bad.expect_closed_without_data(PATIENCE);
    for r in &mut readers {
        r.expect_pattern(0, SIZE, PATIENCE * 3);
    }
    server.offset_of(&stalled);

    // Why keep the scrape that settled, not take another? The lag gauges come from each
    // shard's answer to the scrape, and a shard that does not answer within 200 ms (a
    // loaded machine) is shown with its previous report: one scrape can be fresh and the
    // next stale. Every figure below is from one fresh scrape.
    let mut m = scrape(&addr);
    let ok = poll_until(PATIENCE, || {
        m = scrape(&addr);
        m.total("tailsrv_clients_blocked{") == 1.0
            && m.total("tailsrv_clients_connected{") == 4.0
            && m["tailsrv_clients_streaming"] == 4.0
    });
    assert!(ok, "blocked/connected/streaming never settled: {m:?}");
    assert_eq!(m["tailsrv_file_size_bytes"], SIZE as f64);
    assert_eq!(m["tailsrv_shards"], 2.0);
    assert_eq!(m.total("tailsrv_clients_accepted_total{"), 5.0, "{m:?}");
    assert_eq!(
        m["tailsrv_clients_rejected_total{reason=\"bad_header\"}"],
        1.0
    );
    assert_eq!(
        m["tailsrv_clients_rejected_total{reason=\"too_long\"}"],
        0.0
    );
    assert_eq!(m["tailsrv_clients_rejected_total{reason=\"timeout\"}"], 0.0);
    let sent = m.total("tailsrv_sent_bytes_total{");
    // The readers got everything; the stalled client got what its socket buffers hold.
    assert!(
        sent >= 3.0 * SIZE as f64 && sent < 4.0 * SIZE as f64,
        "sent {sent}"
    );
    // Lags: the readers are caught up (lag 0), the stalled client is megabytes behind.
    assert_eq!(m["tailsrv_clients_streaming"], 4.0, "{m:?}");
    assert_eq!(
        m["tailsrv_clients_behind{more_than_bytes=\"0\"}"], 1.0,
        "{m:?}"
    );
    assert_eq!(
        m["tailsrv_clients_behind{more_than_bytes=\"4096\"}"], 1.0,
        "{m:?}"
    );
    assert_eq!(
        m["tailsrv_clients_behind{more_than_bytes=\"4294967296\"}"], 0.0,
        "{m:?}"
    );
    let lag_sum = m["tailsrv_clients_lag_bytes"];
    assert_eq!(
        lag_sum,
        4.0 * SIZE as f64 - sent,
        "lag sum must be what was not sent"
    );
    assert_eq!(
        m["tailsrv_client_lag_max_bytes"], lag_sum,
        "only the stalled client lags"
    );
    assert_eq!(m["tailsrv_build_info{version=\"0.1.0\"}"], 1.0);

    // Growth shows up; a departed reader is no longer counted.
    server.append(&pattern_range(SIZE, 1000));
    drop(readers.pop());
    assert!(poll_until(PATIENCE, || {
        let m = scrape(&addr);
        m["tailsrv_file_size_bytes"] == (SIZE + 1000) as f64
            && m.total("tailsrv_clients_connected{") == 3.0
    }));
}

#[test]
fn metrics_endpoint_refuses_other_paths_and_methods() {
    let (_server, addr) = start_with_metrics(Server::builder().in_process());
    assert!(metrics_get(&addr, "/nope").0.starts_with("HTTP/1.1 404"));
    let (head, _) = metrics_request(&addr, "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert_eq!(header(&head, "Allow"), Some("GET, HEAD"), "{head}");
    // A scraper that never finishes its request does not block the next one.
    let _silent = TcpStream::connect(&addr).unwrap();
    assert!(metrics_get(&addr, "/metrics").0.starts_with("HTTP/1.1 200"));
}

#[test]
fn metrics_address_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let file = dir.join("served.log");
    let finished = run_to_exit(
        &["-p", "0", "--metrics", &addr, file.to_str().unwrap()],
        PATIENCE,
    );
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(finished.stderr.lines().count(), 1, "{finished:?}");
    assert!(finished.stderr.contains("binding metrics"), "{finished:?}");
}

#[test]
fn metrics_answer_head_and_ignore_a_query_string() {
    let (_server, addr) =
        start_with_metrics(Server::builder().in_process().contents(b"0123456789"));

    // Prometheus sends a scrape config's `params` as a query string.
    let (status, body) = metrics_get(&addr, "/metrics?module=tailsrv&x=1");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("\ntailsrv_file_size_bytes 10\n"), "{body}");

    // HEAD: the headers GET would send, Content-Length included, and no body.
    let (head, body) = metrics_request(&addr, "HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "", "HEAD must not send a body");
    let length: usize = header(&head, "Content-Length")
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let (_, get_body) = metrics_get(&addr, "/metrics");
    // Nothing changes between the two requests (no clients), so the page is the same.
    assert_eq!(
        length,
        get_body.len(),
        "HEAD and GET disagree on the length"
    );
    assert!(header(&head, "Content-Type")
        .unwrap_or_default()
        .starts_with("text/plain; version=0.0.4"));

    let (head, body) = metrics_request(&addr, "HEAD /other HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(body, "");
}

/// Parses metrics text with the Prometheus Python client's parser (tests/parse_metrics.py),
/// or returns `None` where that parser is not installed outside CI (.ci/run installs it).
///
/// Why Python's parser? It is the Prometheus project's own client library, a parser
/// written by the people who define the format, and `pip install prometheus-client` is a
/// small pure-Python package; a Rust parser would add a crate and its dependencies to
/// every build of the tests for one check.
fn parse_with_prometheus(text: &str) -> Option<Vec<Vec<String>>> {
    let installed = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have python3 with prometheus_client (.ci/run installs it)"
        );
        skip(
            "the Prometheus parser check: python3 with prometheus_client is not installed \
             (pip install prometheus-client)",
        );
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/parse_metrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect(),
    )
}

#[test]
fn metrics_parse_as_prometheus_text_and_follow_its_naming_conventions() {
    let (server, addr) = start_with_metrics(
        Server::builder()
            .in_process()
            .contents(b"some bytes\n")
            .arg("--shards")
            .arg("2"),
    );
    let mut client = server.connect(b"0\n");
    client.expect_bytes(b"some bytes\n", PATIENCE);
    let (status, text) = metrics_get(&addr, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let Some(lines) = parse_with_prometheus(&text) else {
        return;
    };

    let mut families: HashMap<String, String> = HashMap::new();
    let mut family = (String::new(), String::new());
    let mut samples = 0;
    for line in &lines {
        match line[0].as_str() {
            "family" => {
                let (name, kind, help) = (&line[1], &line[2], &line[3]);
                assert!(name.starts_with("tailsrv_"), "{name}: no tailsrv_ prefix");
                assert!(!help.is_empty(), "{name}: no HELP");
                assert!(
                    kind == "counter" || kind == "gauge",
                    "{name}: unexpected type {kind}"
                );
                if kind == "gauge" {
                    // The suffixes a reader takes for a counter, a histogram or a summary.
                    for suffix in ["_total", "_count", "_sum", "_bucket", "_created"] {
                        assert!(!name.ends_with(suffix), "gauge {name} ends in {suffix}");
                    }
                }
                assert!(
                    families.insert(name.clone(), kind.clone()).is_none(),
                    "{name} declared twice"
                );
                family = (name.clone(), kind.clone());
            }
            "sample" => {
                samples += 1;
                let (name, labels, value) = (&line[1], &line[2], &line[3]);
                let want = match family.1.as_str() {
                    "counter" => format!("{}_total", family.0),
                    _ => family.0.clone(),
                };
                assert_eq!(name, &want, "sample of family {}", family.0);
                for label in labels.split(',').filter(|l| !l.is_empty()) {
                    let key = label.split('=').next().unwrap();
                    // `le` belongs to histogram buckets and `quantile` to summaries.
                    assert!(
                        key != "le" && key != "quantile",
                        "{name} uses the reserved label {key}"
                    );
                }
                let v: f64 = value.parse().expect("a number");
                assert!(v >= 0.0 && v.is_finite(), "{name}{{{labels}}} = {v}");
            }
            other => panic!("unexpected parser output {other:?}"),
        }
    }
    assert!(samples > 20, "too few samples: {lines:?}");
    for (name, kind) in [
        ("tailsrv_clients_accepted", "counter"),
        ("tailsrv_sent_bytes", "counter"),
        ("tailsrv_clients_rejected", "counter"),
        ("tailsrv_clients_behind", "gauge"),
        ("tailsrv_clients_lag_bytes", "gauge"),
        ("tailsrv_clients_streaming", "gauge"),
        ("tailsrv_file_size_bytes", "gauge"),
    ] {
        assert_eq!(
            families.get(name).map(String::as_str),
            Some(kind),
            "{families:?}"
        );
    }
}
