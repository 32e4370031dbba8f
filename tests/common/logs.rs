//! The server's stderr, collected line by line, and the few fields tests read from it.
//!
//! Log wording is for people, not an API: prefer the in-process `Handle` or the metrics
//! endpoint where a test needs the server's state.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Every line a process wrote to stderr, collected by a thread as they arrive.
#[derive(Clone, Default)]
pub struct Logs(Arc<(Mutex<LogState>, Condvar)>);

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// The process closed its stderr (it exited).
    closed: bool,
}

impl Logs {
    /// Collects `stderr` (any process's) line by line on a thread of its own.
    pub fn collect(stderr: impl Read + Send + 'static) -> Logs {
        let logs = Logs::default();
        let sink = logs.clone();
        thread::spawn(move || {
            let reader = BufReader::new(stderr);
            for line in reader.split(b'\n') {
                let Ok(line) = line else { break };
                let (lock, cond) = &*sink.0;
                let mut state = lock.lock().unwrap();
                state
                    .lines
                    .push(String::from_utf8_lossy(&line).into_owned());
                cond.notify_all();
            }
            let (lock, cond) = &*sink.0;
            lock.lock().unwrap().closed = true;
            cond.notify_all();
        });
        logs
    }

    /// A log subscriber for an in-process server: every tailsrv event at debug level and
    /// above, formatted as the binary writes it to stderr, goes into these logs.
    pub fn dispatch(&self) -> tracing::Dispatch {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tailsrv=debug"))
            .with_ansi(false)
            .with_writer(move || LineSink(sink.clone(), Vec::new()))
            .finish();
        tracing::Dispatch::new(subscriber)
    }

    fn push(&self, line: String) {
        let (lock, cond) = &*self.0;
        lock.lock().unwrap().lines.push(line);
        cond.notify_all();
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// All lines so far, joined for an assertion message.
    pub fn dump(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until `done` holds for the lines so far; false if the deadline passes or the
    /// process closes its stderr first.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.0;
        let mut state = lock.lock().unwrap();
        loop {
            if done(&state.lines) {
                return true;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return false;
            }
            state = cond.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits until the process has closed its stderr (it has exited) and every line it
    /// wrote is in; false if the deadline passes first.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.0;
        let mut state = lock.lock().unwrap();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = cond.wait_timeout(state, deadline - now).unwrap().0;
        }
        true
    }

    /// Waits for the first line that satisfies `matches` and returns it; panics with the log
    /// if none comes within `timeout`.
    #[track_caller]
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let mut found = None;
        self.wait_until(timeout, |lines| {
            found = lines.iter().find(|l| matches(l)).cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no log line {what} within {timeout:?}; log:\n{}",
                self.dump()
            )
        })
    }
}

/// Writes what it is given into [`Logs`], a line at a time.
struct LineSink(Logs, Vec<u8>);

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        while let Some(end) = self.1.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.1.drain(..=end).collect();
            self.0
                .push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        if !self.1.is_empty() {
            let rest = std::mem::take(&mut self.1);
            self.0.push(String::from_utf8_lossy(&rest).into_owned());
        }
    }
}

/// The value of `name=` in a tracing log line (up to the next space), if present.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// The port in a logged peer address, whatever its form: `Some([::ffff:127.0.0.1]:5)`,
/// `127.0.0.1:5` or `[::1]:5`.
pub fn port_of(peer: &str) -> Option<u16> {
    peer.trim_end_matches(')').rsplit(':').next()?.parse().ok()
}

/// Whether a log line names the peer whose local (client-side) port is `port`.
pub fn mentions_peer(line: &str, port: u16) -> bool {
    field(line, "peer").and_then(port_of) == Some(port)
}
