//! The progress line on stderr during a long catch-up, when stderr is a terminal.

use std::io::Write;
use std::time::{Duration, Instant};

/// How often the line is redrawn.
pub const TICK: Duration = Duration::from_millis(500);

/// One line, redrawn in place with `\r` while bytes keep arriving and erased once they stop.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    shown: bool,
    last: Instant,
    bytes_at_last: u64,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            shown: false,
            last: Instant::now(),
            bytes_at_last: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Called with the stream's position after each write, and on idle ticks.
    pub fn update(&mut self, position: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let elapsed = now - self.last;
        if elapsed < TICK {
            return;
        }
        let moved = position.saturating_sub(self.bytes_at_last);
        self.last = now;
        self.bytes_at_last = position;
        if moved == 0 {
            self.clear();
            return;
        }
        let rate = moved as f64 / elapsed.as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{}", line(position, rate));
        let _ = err.flush();
        self.shown = true;
    }

    /// Erases the line (before a log line, and when the stream goes quiet).
    pub fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.shown = false;
        }
    }

    /// Starts measuring afresh from `position` (a new connection).
    pub fn restart(&mut self, position: u64) {
        self.last = Instant::now();
        self.bytes_at_last = position;
    }
}

/// `at byte 1.5 GiB, 120.3 MiB/s`.
pub fn line(position: u64, rate: f64) -> String {
    format!(
        "tailsrv-fetch: at byte {}, {}/s",
        size(position as f64),
        size(rate)
    )
}

fn size(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_well() {
        assert_eq!(line(0, 0.0), "tailsrv-fetch: at byte 0 B, 0 B/s");
        assert_eq!(
            line(3 << 30, 1.5 * 1048576.0),
            "tailsrv-fetch: at byte 3.0 GiB, 1.5 MiB/s"
        );
        assert_eq!(
            line(1023, 2048.0),
            "tailsrv-fetch: at byte 1023 B, 2.0 KiB/s"
        );
    }
}
