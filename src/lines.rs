//! The last N lines of the file: where they start, found by reading backwards from the end.
//!
//! `tail -n` semantics: a line is the bytes up to and including a `\n`; a last line without
//! one counts as a line too. So the final byte of the file, if it is a `\n`, ends the last
//! line rather than starting a new (empty) one, and the last N lines start just after the
//! N-th `\n` before it. Fewer than N lines in the file means the whole file; N = 0 means
//! its end (only what is appended from now on).
//!
//! Why backwards, in chunks? Reading from the start would cost the whole file (a 1 GiB log
//! for the last 10 lines); reading backwards costs about the bytes of those lines. The first
//! chunk is small (most requests want a screenful of short lines) and each next one is
//! twice as large, up to [`MAX_CHUNK`], so a request for many lines takes few reads.
//!
//! Why a bound? One pathological line (a 500 MiB blob with no newline) would otherwise make
//! every `n10` read all of it, again for each client. The scan stops [`MAX_SCAN`] bytes
//! before the end: if the lines asked for reach further back, the stream starts there,
//! in the middle of a line. HTTP clients see where in `Tailsrv-Start`.

use std::io;

/// The first read's size.
pub const FIRST_CHUNK: usize = 64 << 10;
/// The largest read; chunks double up to it.
pub const MAX_CHUNK: usize = 1 << 20;
/// How far back from the end the scan looks at most.
///
/// Why 64 MiB? Far beyond any sane line count's worth of log lines, and a few tens of
/// milliseconds of reading from the page cache (on the shard's blocking thread, see
/// `client`), so a client cannot make the server read much for it.
pub const MAX_SCAN: u64 = 64 << 20;

/// Where the last lines start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The byte offset of the first of the lines.
    pub offset: u64,
    /// The lines reached further back than the scan may look: `offset` is where it stopped,
    /// possibly in the middle of a line.
    pub cut_short: bool,
}

/// Finds where the last `n` lines of a file of `size` bytes start, looking at most
/// `max_scan` bytes back, through `read_at(buf, offset)`, which must fill `buf` with the
/// file's bytes at `offset`.
pub fn start_of_last(
    n: u64,
    size: u64,
    max_scan: u64,
    mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<Found> {
    if n == 0 {
        return Ok(Found {
            offset: size,
            cut_short: false,
        });
    }
    let floor = size.saturating_sub(max_scan);
    let mut buf = Vec::new();
    let mut chunk = FIRST_CHUNK;
    let mut end = size;
    let mut seen = 0u64;
    while end > floor {
        let len = usize::try_from(end - floor).map_or(chunk, |left| left.min(chunk));
        let at = end - len as u64;
        buf.resize(len, 0);
        read_at(&mut buf, at)?;
        let mut bytes = &buf[..];
        if end == size {
            // The file's last newline ends its last line; it does not start another.
            if let Some((b'\n', before)) = bytes.split_last() {
                bytes = before;
            }
        }
        while let Some(nl) = bytes.iter().rposition(|&b| b == b'\n') {
            seen += 1;
            if seen == n {
                return Ok(Found {
                    offset: at + nl as u64 + 1,
                    cut_short: false,
                });
            }
            bytes = &bytes[..nl];
        }
        end = at;
        chunk = (chunk * 2).min(MAX_CHUNK);
    }
    Ok(Found {
        offset: floor,
        cut_short: floor > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: split the file into lines the obvious way and add up the last n.
    fn model(file: &[u8], n: u64) -> u64 {
        let lines: Vec<&[u8]> = file.split_inclusive(|&b| b == b'\n').collect();
        let keep = lines.len().min(n as usize);
        let tail: usize = lines[lines.len() - keep..].iter().map(|l| l.len()).sum();
        (file.len() - tail) as u64
    }

    fn find(file: &[u8], n: u64, max_scan: u64) -> Found {
        start_of_last(n, file.len() as u64, max_scan, |buf, at| {
            let at = at as usize;
            buf.copy_from_slice(&file[at..at + buf.len()]);
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn table() {
        let cases: &[(&str, u64, u64)] = &[
            ("", 10, 0),
            ("", 0, 0),
            ("a\nb\nc\n", 0, 6),
            ("a\nb\nc\n", 1, 4),
            ("a\nb\nc\n", 2, 2),
            ("a\nb\nc\n", 3, 0),
            ("a\nb\nc\n", 4, 0),
            // A last line without a newline counts as a line.
            ("a\nb\nc", 1, 4),
            ("a\nb\nc", 3, 0),
            // Empty lines are lines.
            ("\n\n\n", 1, 2),
            ("\n\n\n", 3, 0),
            ("x\n\n", 1, 2),
            ("x\n\n", 2, 0),
            ("no newline at all", 1, 0),
            ("\n", 1, 0),
        ];
        for &(file, n, want) in cases {
            let got = find(file.as_bytes(), n, MAX_SCAN);
            assert_eq!(got.offset, want, "last {n} lines of {file:?}");
            assert!(!got.cut_short);
            assert_eq!(model(file.as_bytes(), n), want, "the model, for {file:?}");
        }
    }

    #[test]
    fn a_line_longer_than_the_scan_starts_the_stream_where_the_scan_stopped() {
        // One 3 MiB line after a short one: the scan (bounded at 1 MiB here) stops inside it.
        let mut file = b"short\n".to_vec();
        file.extend(std::iter::repeat_n(b'x', 3 << 20));
        file.push(b'\n');
        let got = find(&file, 2, 1 << 20);
        assert_eq!(got.offset, file.len() as u64 - (1 << 20));
        assert!(got.cut_short);
        // With room to look, the same request finds the real start.
        let got = find(&file, 2, MAX_SCAN);
        assert_eq!(
            got,
            Found {
                offset: 0,
                cut_short: false
            }
        );
        // A scan that covers the whole file is not cut short, whatever it finds.
        let got = find(b"abc", 5, 3);
        assert_eq!(
            got,
            Found {
                offset: 0,
                cut_short: false
            }
        );
    }

    #[test]
    fn reads_only_the_chunks_it_needs_and_in_growing_sizes() {
        let file: Vec<u8> = (0..(8u32 << 20) / 16)
            .flat_map(|i| format!("{i:015}\n").into_bytes())
            .collect();
        let mut reads = Vec::new();
        let got = start_of_last(10, file.len() as u64, MAX_SCAN, |buf, at| {
            reads.push((at, buf.len()));
            buf.copy_from_slice(&file[at as usize..at as usize + buf.len()]);
            Ok(())
        })
        .unwrap();
        assert_eq!(got.offset, file.len() as u64 - 160);
        assert_eq!(
            reads,
            [(file.len() as u64 - FIRST_CHUNK as u64, FIRST_CHUNK)]
        );
        reads.clear();
        // 100,000 lines are 1.6 MB: reads of 64 KiB, 128 KiB, ... 1 MiB, 1 MiB.
        start_of_last(100_000, file.len() as u64, MAX_SCAN, |buf, at| {
            reads.push((at, buf.len()));
            buf.copy_from_slice(&file[at as usize..at as usize + buf.len()]);
            Ok(())
        })
        .unwrap();
        let sizes: Vec<usize> = reads.iter().map(|r| r.1 >> 10).collect();
        assert_eq!(sizes, [64, 128, 256, 512, 1024]);
    }

    #[test]
    fn a_failed_read_is_an_error() {
        let err = start_of_last(3, 100, MAX_SCAN, |_, _| {
            Err(io::ErrorKind::UnexpectedEof.into())
        });
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    proptest! {
        #[test]
        fn agrees_with_the_model(
            file in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..400),
            n in 0u64..50,
        ) {
            let got = find(&file, n, MAX_SCAN);
            prop_assert_eq!(got.offset, model(&file, n));
            prop_assert!(!got.cut_short);
        }

        #[test]
        fn a_bounded_scan_stops_at_its_floor_and_says_so(
            file in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'a'), Just(b'a')], 0..400),
            n in 1u64..20,
            max_scan in 0u64..200,
        ) {
            let floor = (file.len() as u64).saturating_sub(max_scan);
            let want = model(&file, n);
            let got = find(&file, n, max_scan);
            prop_assert_eq!(got.offset, want.max(floor));
            prop_assert_eq!(got.cut_short, want <= floor && floor > 0);
        }
    }
}
