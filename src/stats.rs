//! Per-shard counters: written by the shard that owns them, read by anyone on request.
//!
//! Why atomics with relaxed ordering? Each counter has one writer (its shard), so an add is
//! an uncontended instruction on the shard's own cache line, and a reader that gathers them
//! needs no lock and no message to the shard.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a client was turned away before it got any data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The header did not parse (malformed, overflow, not ASCII, empty).
    BadHeader,
    /// No newline within the length cap.
    TooLong,
    /// No complete header within the header timeout.
    Timeout,
}

impl Rejection {
    pub const ALL: [Rejection; 3] = [Rejection::BadHeader, Rejection::TooLong, Rejection::Timeout];

    pub fn name(self) -> &'static str {
        match self {
            Rejection::BadHeader => "bad_header",
            Rejection::TooLong => "too_long",
            Rejection::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Clients whose connection is open now, header read or not.
    pub connected: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    rejected: [AtomicU64; 3],
    /// File bytes sent to clients.
    pub bytes_sent: AtomicU64,
    /// Clients waiting for their socket to drain right now.
    pub blocked: AtomicU64,
    /// File bytes that went out through the writability probe rather than sendfile.
    pub probe_bytes: AtomicU64,
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn reject(&self, why: Rejection) {
        Self::add(&self.rejected[why as usize], 1);
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
        Self::get(&self.rejected[why as usize])
    }
}
