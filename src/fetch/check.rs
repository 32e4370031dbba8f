//! The rotation check: are the bytes just before the resume point still the ones held?
//!
//! The first line of defence is the file's identity, which the server names in its HTTP
//! response (`Tailsrv-File`) and tailsrv-fetch keeps with the copy: a different identity
//! is a new file, before any byte arrives; a reported size below the resume point is one
//! too. This module is the second line, which also serves servers that do not answer HTTP:
//! on every reconnect tailsrv-fetch asks for a few bytes *before* the point it resumes from (header `position - k`) and compares them
//! with the last `k` bytes it already holds. For the same file they exist, so they arrive
//! at once and compare equal; the stream then simply goes on past the resume point on the
//! same connection. If they differ, or fewer than `k` arrive within a short bound (the
//! server's file is now shorter than the resume point), the server is serving another file.
//!
//! What this cannot see: a new file whose bytes in that window happen to equal the old
//! ones (the same content written again, or content that repeats with a period dividing
//! the distance), and a new file that is shorter but grows past the resume point, with
//! identical window bytes, before the bound expires. Both need the new file to reproduce
//! the old file's bytes at the same offsets, which a log of timestamped records never
//! does; a file of constant or periodic bytes can fool it.

/// What the re-read bytes say about the server's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte compared equal: resume.
    Same,
    /// The byte at this offset differs from the one held.
    Differs { at: u64 },
    /// Only bytes up to this offset arrived in time (all equal), or the server says the
    /// file is this long: the file is shorter than the resume point.
    Shorter { size: u64 },
    /// The server names another file (`Tailsrv-File`) than the one the bytes held came
    /// from. Checked first, before any byte.
    Replaced,
}

impl Verdict {
    /// The reason, for a log line or an error message.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Same => "same bytes".into(),
            Verdict::Differs { at } => format!("byte {at} differs"),
            Verdict::Shorter { size } => {
                format!("the file holds only {size} bytes")
            }
            Verdict::Replaced => "the server names another file (Tailsrv-File)".into(),
        }
    }
}

/// One connection's check: the window `start..start + expected.len()` compared as it arrives.
#[derive(Debug)]
pub struct Check {
    start: u64,
    expected: Vec<u8>,
    matched: usize,
}

impl Check {
    /// A check of `expected`, the bytes held at offsets `start..`.
    pub fn new(start: u64, expected: Vec<u8>) -> Check {
        Check {
            start,
            expected,
            matched: 0,
        }
    }

    /// The header to send: the window's first offset.
    pub fn header(&self) -> u64 {
        self.start
    }

    /// Compares the next received bytes. Returns how many of them belong to the window
    /// (the rest are the stream past the resume point) and the verdict once it is known.
    pub fn feed(&mut self, bytes: &[u8]) -> (usize, Option<Verdict>) {
        let want = &self.expected[self.matched..];
        let n = want.len().min(bytes.len());
        if let Some(i) = want[..n].iter().zip(bytes).position(|(a, b)| a != b) {
            let at = self.start + (self.matched + i) as u64;
            self.matched += i;
            return (i, Some(Verdict::Differs { at }));
        }
        self.matched += n;
        let done = self.matched == self.expected.len();
        (n, done.then_some(Verdict::Same))
    }

    /// The verdict when the bound expired before the window was complete.
    pub fn timed_out(&self) -> Verdict {
        Verdict::Shorter {
            size: self.start + self.matched as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_bytes_in_any_split_say_same_and_hand_back_the_rest() {
        let held = b"0123456789".to_vec();
        for split in 0..=10 {
            let mut check = Check::new(100, held.clone());
            assert_eq!(check.header(), 100);
            let mut stream = held.clone();
            stream.extend_from_slice(b"new");
            let (used, verdict) = check.feed(&stream[..split]);
            assert_eq!(used, split);
            if split < 10 {
                assert_eq!(verdict, None);
                let (used, verdict) = check.feed(&stream[split..]);
                assert_eq!((used, verdict), (10 - split, Some(Verdict::Same)));
            } else {
                assert_eq!(verdict, Some(Verdict::Same));
            }
        }
    }

    #[test]
    fn a_differing_byte_is_reported_at_its_offset() {
        let mut check = Check::new(1000, b"abcdef".to_vec());
        assert_eq!(check.feed(b"ab"), (2, None));
        assert_eq!(check.feed(b"cX"), (1, Some(Verdict::Differs { at: 1003 })));
        let mut check = Check::new(0, b"abc".to_vec());
        assert_eq!(check.feed(b"z"), (0, Some(Verdict::Differs { at: 0 })));
    }

    #[test]
    fn too_few_bytes_in_time_mean_a_shorter_file() {
        let mut check = Check::new(500, vec![7; 100]);
        assert_eq!(check.timed_out(), Verdict::Shorter { size: 500 });
        check.feed(&[7; 40]);
        assert_eq!(check.timed_out(), Verdict::Shorter { size: 540 });
    }
}
