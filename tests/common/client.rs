//! A TCP client of the server under test, with deadline-bound reads.

use super::*;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// How a client's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Orderly: read returned 0 (FIN).
    Eof,
    /// The connection was reset.
    Reset,
}

/// A TCP client of the server under test.
pub struct Client {
    stream: TcpStream,
}

impl Client {
    #[track_caller]
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        Client { stream }
    }

    /// Connects to `addr` (e.g. `[::1]:port`), for tests that care where a client comes from.
    #[track_caller]
    pub fn connect_to(addr: std::net::SocketAddr) -> Client {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Client { stream }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// The client side's port: how the server's log names this client.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local address").port()
    }

    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("sending {} bytes: {e}", bytes.len()));
    }

    /// Sends what it can of `bytes`, ignoring errors: for a client the server may already
    /// have closed.
    pub fn try_send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Closes the connection with a reset (SO_LINGER 0), as a crashing client's kernel would.
    #[track_caller]
    pub fn reset(self) {
        use std::os::fd::AsFd;
        tailsrv::sys::set_linger_zero(self.stream.as_fd()).expect("SO_LINGER");
        drop(self.stream);
    }

    /// Half-closes: the server sees end of input, the client can still read.
    #[track_caller]
    pub fn shutdown_write(&self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
    }

    /// One read, waiting at most until `deadline`. A timeout is `ErrorKind::TimedOut`.
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(ErrorKind::TimedOut.into())
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Reads exactly `n` bytes within `timeout`; panics on EOF, error or timeout.
    #[track_caller]
    pub fn read_exactly(&mut self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = vec![0; n];
        let mut len = 0;
        while len < n {
            match self.read_by(&mut got[len..], deadline) {
                Ok(0) => panic!("EOF after {len} of {n} bytes"),
                Ok(k) => len += k,
                Err(e) => panic!("after {len} of {n} bytes: {e}"),
            }
        }
        got
    }

    /// Reads `want.len()` bytes within `timeout` and asserts they are `want`.
    #[track_caller]
    pub fn expect_bytes(&mut self, want: &[u8], timeout: Duration) {
        let got = self.read_exactly(want.len(), timeout);
        assert_bytes(&got, want, "client received");
    }

    /// Reads pattern bytes `start..start + len` within `timeout`, comparing as they come.
    #[track_caller]
    pub fn expect_pattern(&mut self, start: u64, len: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = start;
        while at < start + len {
            let want = (start + len - at).min(buf.len() as u64) as usize;
            let n = match self.read_by(&mut buf[..want], deadline) {
                Ok(0) => panic!("EOF at offset {at}, want up to {}", start + len),
                Ok(n) => n,
                Err(e) => panic!("at offset {at} of {start}..{}: {e}", start + len),
            };
            assert_bytes(
                &buf[..n],
                &pattern_range(at, n),
                &format!("bytes from offset {at}"),
            );
            at += n as u64;
        }
    }

    /// Asserts nothing arrives (no data, no EOF) for `quiet`.
    #[track_caller]
    pub fn expect_silence(&mut self, quiet: Duration) {
        let mut buf = [0u8; 4096];
        match self.read_by(&mut buf, Instant::now() + quiet) {
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Ok(0) => panic!("expected silence, got EOF"),
            Ok(n) => panic!(
                "expected silence, got {n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => panic!("expected silence, got error {e}"),
        }
    }

    /// Reads everything until the connection ends; panics if it is still open at `timeout`.
    #[track_caller]
    pub fn read_to_end(&mut self, timeout: Duration) -> (Vec<u8>, Ending) {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.read_by(&mut buf, deadline) {
                Ok(0) => return (got, Ending::Eof),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return (got, Ending::Reset)
                }
                Err(e) => panic!("after {} bytes, waiting for the end: {e}", got.len()),
            }
        }
    }

    /// Asserts an orderly end (FIN, not a reset) within `timeout`, with no further bytes.
    #[track_caller]
    pub fn expect_eof(&mut self, timeout: Duration) {
        let (got, ending) = self.read_to_end(timeout);
        assert!(
            got.is_empty(),
            "expected EOF, got {} more bytes first",
            got.len()
        );
        assert_eq!(ending, Ending::Eof, "expected an orderly FIN");
    }

    /// Asserts the server closes the connection (FIN or reset) within `timeout` having sent
    /// no bytes at all.
    #[track_caller]
    pub fn expect_closed_without_data(&mut self, timeout: Duration) -> Ending {
        let (got, ending) = self.read_to_end(timeout);
        assert!(
            got.is_empty(),
            "expected no data before the close, got {} bytes: {:?}",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(64)])
        );
        ending
    }
}
