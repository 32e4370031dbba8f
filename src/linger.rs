//! Coalescing deliveries under load (`--linger`): when the watcher published growth less than
//! a window ago, it publishes the next growth only once the window has passed, so that a burst
//! of appends reaches the shards as one ring and one larger send per client.
//!
//! Why? What an append costs tailsrv is mostly wake-ups: the watcher's, then each shard's
//! (about 23 µs of CPU each here, against 7 µs for a thread in epoll; docs/benchmarks.md,
//! "The floor"), and a client's `sendfile` of 64 bytes costs about what one of 64 KiB does.
//! A file appended to 10,000 times a second woke the watcher and every shard with a waiting
//! client 10,000 times a second. With a window W, it wakes them at most once per W, and each
//! wake carries every append of the window. Kafka's producers (`linger.ms`), Nagle's
//! algorithm and NIC interrupt coalescing make the same trade.
//!
//! Why does the window grow? A fixed window is a bad trade at both ends: one short enough to
//! leave a file appended to 1,000 times a second alone (under 1 ms) saves little at 10,000 a
//! second, and one long enough to save there delays every append of the calmer file. So what
//! decides whether an append waits is the *first window*, a quarter of `--linger`: growth
//! heard less than that after the last delivery waits, growth heard later goes at once. And
//! how long it waits grows with the load: the window doubles with every delivery that had to
//! wait, up to `--linger`, and starts again from the first window with the first delivery
//! that did not. Appends that come less often than the first window are never held; a file
//! that stays busier than that is delivered once per `--linger`.
//!
//! Why judge by when inotify spoke, and not sleep out the window before reading inotify?
//! Sleeping blind saves the watcher one wake-up per delivery, but then it cannot tell one
//! append per window from a hundred: a file appended to every millisecond would look busy
//! to a window of 2 ms forever, and each of its appends would wait. Hearing the event first
//! tells how soon after the last delivery the file grew, which is the whole question.
//!
//! What it costs: an append heard within the first window after a delivery waits for the
//! rest of the current window, so under load a reader sees appends up to `--linger` later
//! than it would have. An append to a file that was calm for the first window is delivered
//! at once, as without the window.

use std::time::{Duration, Instant};

/// The longest window `--linger` takes: beyond a second, "live" no longer describes it.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);

/// The watcher's memory of its last delivery, and what it implies for the next.
#[derive(Debug)]
pub(crate) struct Linger {
    /// `--linger`: the longest window.
    most: Duration,
    /// The window now: from a quarter of `most`, doubling while the file stays busy.
    window: Duration,
    /// When growth was last published.
    last: Option<Instant>,
    /// Whether the look now under way waited for the window.
    held: bool,
}

impl Linger {
    pub fn new(most: Duration) -> Linger {
        Linger {
            most,
            window: first_window(most),
            last: None,
            held: false,
        }
    }

    /// Growth was heard at `now`: until when it must wait, if at all. It waits if it came
    /// within the first window after the last delivery, and then until the current window
    /// after that delivery ends.
    pub fn hold(&self, now: Instant) -> Option<Instant> {
        if self.window.is_zero() {
            return None;
        }
        let last = self.last?;
        if now >= last + first_window(self.most) {
            return None;
        }
        let until = last + self.window;
        (until > now).then_some(until)
    }

    /// The look now under way waited for the window.
    pub fn held(&mut self) {
        self.held = true;
    }

    /// Growth was published at `now`; returns whether that delivery waited for its window.
    /// One that did makes the next window twice as long (up to `--linger`); one that did
    /// not starts again from the first window.
    pub fn delivered(&mut self, now: Instant) -> bool {
        let held = std::mem::take(&mut self.held);
        self.last = Some(now);
        self.window = if held {
            (self.window * 2).min(self.most)
        } else {
            first_window(self.most)
        };
        held
    }

    /// A look found no growth (the event was about something else): nothing was delivered,
    /// and the window stays as it was.
    pub fn found_nothing(&mut self) {
        self.held = false;
    }

    /// The window now.
    #[cfg(test)]
    fn window(&self) -> Duration {
        self.window
    }
}

/// The window a calm file starts with: a quarter of `--linger`.
pub fn first_window(most: Duration) -> Duration {
    most / 4
}

/// Parses a `--linger` window: a number and a unit (`us`, `ms` or `s`), or `0` for none.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" if number.parse::<f64>() == Ok(0.0) => 0.0,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "" => {
            return Err(format!(
                "`{text}` needs a unit: for example 500us, 2ms or 0.01s (or 0 for none)"
            ))
        }
        other => return Err(format!("`{other}` is not a unit: use us, ms or s")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 2ms"))?;
    let secs = value * scale;
    if !(0.0..=MAX_WINDOW.as_secs_f64()).contains(&secs) {
        return Err(format!("`{text}`: the window is at most 1s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(2);

    #[test]
    fn a_calm_file_is_delivered_at_once() {
        let t0 = Instant::now();
        let mut l = Linger::new(W);
        assert_eq!(l.hold(t0), None, "nothing delivered yet");
        assert!(!l.delivered(t0));
        // The next append comes after the first window: no hold.
        assert_eq!(l.hold(t0 + W / 4), None);
        assert_eq!(l.hold(t0 + W), None);
    }

    #[test]
    fn appends_further_apart_than_the_first_window_are_never_held_even_after_a_burst() {
        let t0 = Instant::now();
        let mut l = Linger::new(W);
        l.delivered(t0);
        // A burst first: the window grows to --linger.
        let mut at = t0;
        for _ in 0..4 {
            let until = l.hold(at + Duration::from_micros(10)).unwrap();
            l.held();
            l.delivered(until);
            at = until;
        }
        assert_eq!(l.window(), W);
        // Then appends a little more than a first window apart: none waits, the window
        // starts again from the first one.
        let gap = W / 4 + Duration::from_micros(10);
        for i in 1..100 {
            let t = at + gap * i;
            assert_eq!(l.hold(t), None, "append {i} was held");
            assert!(!l.delivered(t));
            assert_eq!(l.window(), W / 4);
        }
    }

    #[test]
    fn a_busy_file_doubles_the_window_up_to_linger() {
        let t0 = Instant::now();
        let mut l = Linger::new(W);
        l.delivered(t0);
        // Growth heard soon after a delivery waits for the window after it, which doubles
        // with every held delivery: W/4, W/2, W, W, ...
        let mut at = t0;
        for window in [W / 4, W / 2, W, W, W] {
            let heard = at + Duration::from_micros(100);
            assert_eq!(l.hold(heard), Some(at + window));
            l.held();
            at += window;
            assert!(l.delivered(at), "that delivery waited");
        }
        // An event that turns out to be no growth changes nothing.
        assert!(l.hold(at + Duration::from_micros(100)).is_some());
        l.held();
        l.found_nothing();
        assert_eq!(l.window(), W);
        // Growth heard after the first window goes at once, and the window starts again.
        let calm = at + W / 4;
        assert_eq!(l.hold(calm), None);
        assert!(!l.delivered(calm));
        assert_eq!(l.hold(calm + W / 8), Some(calm + W / 4));
    }

    #[test]
    fn a_zero_window_never_holds() {
        let t0 = Instant::now();
        let mut l = Linger::new(Duration::ZERO);
        l.delivered(t0);
        assert_eq!(l.hold(t0), None);
        l.held();
        l.delivered(t0);
        assert_eq!(l.hold(t0), None, "however busy");
    }

    #[test]
    fn parses_windows_with_units() {
        for (text, want) in [
            ("0", Some(Duration::ZERO)),
            ("0.0", Some(Duration::ZERO)),
            ("0ms", Some(Duration::ZERO)),
            ("500us", Some(Duration::from_micros(500))),
            ("500µs", Some(Duration::from_micros(500))),
            ("2ms", Some(Duration::from_millis(2))),
            ("1.5ms", Some(Duration::from_micros(1500))),
            ("0.01s", Some(Duration::from_millis(10))),
            ("1s", Some(Duration::from_secs(1))),
            ("1001ms", None),
            ("2", None),
            ("-1ms", None),
            ("ms", None),
            ("2 hours", None),
            ("", None),
            ("1e3us", None),
        ] {
            assert_eq!(parse_window(text).ok(), want, "{text:?}");
        }
        assert_eq!(
            parse_window("5").unwrap_err(),
            "`5` needs a unit: for example 500us, 2ms or 0.01s (or 0 for none)"
        );
    }
}
