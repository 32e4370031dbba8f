//! The client header: parsing it and turning it into a byte offset. Pure logic, no I/O.
//!
//! A header is the bytes a client sends before its first `\n`: an optional sign and a
//! decimal integer that fits in an `i64`, or `n` and such an integer without a sign (the
//! last so many lines), with ASCII spaces, tabs and `\r` allowed around it.
//!
//! Why `n`? The integer grammar refuses every header that starts with a letter, so no header
//! a client sends today changes meaning; and `echo n10` reads as `tail -n 10`.

use std::fmt;

/// The longest header accepted, newline and surrounding whitespace included.
///
/// Why 64? The longest meaningful header, `-9223372036854775808`, is 20 bytes; 64 leaves room
/// for a `\r` and generous padding while keeping the per-client read buffer on the stack.
pub const MAX_HEADER_LEN: usize = 64;

/// Where a client asked to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `n` or `+n`: at byte `n`.
    At(u64),
    /// `-n`: `n` bytes before the end of the file; `-0` is the end itself.
    FromEnd(u64),
    /// `nN`: the start of the last `N` lines, as `tail -n N` counts them (see
    /// `crate::lines`); `n0` is the end itself. Resolving it reads the file.
    Lines(u64),
}

impl Start {
    /// The offset to start at, given the file's size when the header is processed.
    ///
    /// `At(n)` may lie beyond `size`: the client then waits for the file to grow past it.
    /// `FromEnd(n)` is clamped at the start of the file. `None` for `Lines`, which only the
    /// file's bytes can resolve (`crate::lines::start_of_last`).
    pub fn resolve(self, size: u64) -> Option<u64> {
        match self {
            Start::At(n) => Some(n),
            Start::FromEnd(n) => Some(size.saturating_sub(n)),
            Start::Lines(_) => None,
        }
    }
}

/// Why a header was refused. Each is logged with the peer and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Nothing but whitespace before the newline (or before the client closed).
    Empty,
    /// A byte outside ASCII.
    NotAscii,
    /// Not of the form `[+-]?[0-9]+` or `n[0-9]+`.
    Malformed,
    /// The number does not fit in an `i64`.
    Overflow,
    /// No newline within [`MAX_HEADER_LEN`] bytes.
    TooLong,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::Empty => "empty header",
            HeaderError::NotAscii => "header is not ASCII",
            HeaderError::Malformed => {
                "header is not of the form [+-]?[0-9]+ (a byte offset) or n[0-9]+ (a line count)"
            }
            HeaderError::Overflow => "header does not fit in a 64-bit signed integer",
            HeaderError::TooLong => "header longer than 64 bytes",
        })
    }
}

impl std::error::Error for HeaderError {}

fn is_padding(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

/// Parses one header line, without its terminating `\n`.
pub fn parse(line: &[u8]) -> Result<Start, HeaderError> {
    if line.len() >= MAX_HEADER_LEN {
        return Err(HeaderError::TooLong);
    }
    if !line.is_ascii() {
        return Err(HeaderError::NotAscii);
    }
    let start = line.iter().position(|&b| !is_padding(b));
    let Some(start) = start else {
        return Err(HeaderError::Empty);
    };
    let end = line
        .iter()
        .rposition(|&b| !is_padding(b))
        .map_or(start, |e| e + 1);
    let text = &line[start..end];
    let (negative, lines, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, false, rest),
        Some((b'+', rest)) => (false, false, rest),
        Some((b'n', rest)) => (false, true, rest),
        _ => (false, false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HeaderError::Malformed);
    }
    // i64::MIN's magnitude is one more than i64::MAX's: `-9223372036854775808` fits.
    let limit: u64 = if negative { 1 << 63 } else { i64::MAX as u64 };
    let mut value: u64 = 0;
    for &d in digits {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .filter(|&v| v <= limit)
            .ok_or(HeaderError::Overflow)?;
    }
    Ok(if negative {
        Start::FromEnd(value)
    } else if lines {
        Start::Lines(value)
    } else {
        Start::At(value)
    })
}

/// What the bytes received so far say about the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A newline arrived: the header is complete (parsed or refused).
    Done(Result<Start, HeaderError>),
    /// No newline yet and still under the length cap: keep reading.
    NeedMore,
}

/// Looks at the bytes a client has sent so far (at most [`MAX_HEADER_LEN`] of them).
pub fn scan(received: &[u8]) -> Progress {
    match received.iter().position(|&b| b == b'\n') {
        Some(nl) => Progress::Done(parse(&received[..nl])),
        None if received.len() >= MAX_HEADER_LEN => Progress::Done(Err(HeaderError::TooLong)),
        None => Progress::NeedMore,
    }
}

/// The header of a client that closed its sending side before any newline.
///
/// Why accept it? `printf 100 | nc -N host port` is a natural client; the half-close ends the
/// header as clearly as a newline would.
pub fn at_eof(received: &[u8]) -> Result<Start, HeaderError> {
    parse(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        use HeaderError::*;
        use Start::*;
        let cases: &[(&str, Result<Start, HeaderError>)] = &[
            ("0", Ok(At(0))),
            ("1000", Ok(At(1000))),
            ("+1000", Ok(At(1000))),
            ("-1000", Ok(FromEnd(1000))),
            ("-0", Ok(FromEnd(0))),
            ("+0", Ok(At(0))),
            ("007", Ok(At(7))),
            ("  42 \t\r", Ok(At(42))),
            ("\t-5\r", Ok(FromEnd(5))),
            ("9223372036854775807", Ok(At(i64::MAX as u64))),
            ("+9223372036854775807", Ok(At(i64::MAX as u64))),
            ("-9223372036854775808", Ok(FromEnd(1 << 63))),
            ("9223372036854775808", Err(Overflow)),
            ("-9223372036854775809", Err(Overflow)),
            ("99999999999999999999999", Err(Overflow)),
            ("", Err(Empty)),
            (" \t\r", Err(Empty)),
            ("-", Err(Malformed)),
            ("+", Err(Malformed)),
            ("--1", Err(Malformed)),
            ("+-1", Err(Malformed)),
            ("1 2", Err(Malformed)),
            ("12a", Err(Malformed)),
            ("0x10", Err(Malformed)),
            ("1e3", Err(Malformed)),
            ("1.0", Err(Malformed)),
            ("- 1", Err(Malformed)),
            ("\x0b1", Err(Malformed)),
            ("n10", Ok(Lines(10))),
            (" n0\r", Ok(Lines(0))),
            ("n007", Ok(Lines(7))),
            ("n9223372036854775807", Ok(Lines(i64::MAX as u64))),
            ("n9223372036854775808", Err(Overflow)),
            ("n", Err(Malformed)),
            ("n-1", Err(Malformed)),
            ("n+1", Err(Malformed)),
            ("-n1", Err(Malformed)),
            ("N10", Err(Malformed)),
            ("n 10", Err(Malformed)),
            ("10n", Err(Malformed)),
            ("１", Err(NotAscii)),
            ("1\u{e9}", Err(NotAscii)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input.as_bytes()), *want, "parse({input:?})");
        }
    }

    #[test]
    fn too_long_lines_are_refused_even_if_numeric() {
        let long = format!("{}1", " ".repeat(MAX_HEADER_LEN));
        assert_eq!(parse(long.as_bytes()), Err(HeaderError::TooLong));
        assert_eq!(
            scan(&[b' '; MAX_HEADER_LEN]),
            Progress::Done(Err(HeaderError::TooLong))
        );
        assert_eq!(scan(&[b' '; MAX_HEADER_LEN - 1]), Progress::NeedMore);
    }

    #[test]
    fn scan_stops_at_first_newline_and_ignores_the_rest() {
        assert_eq!(scan(b"12\nxyz"), Progress::Done(Ok(Start::At(12))));
        assert_eq!(scan(b"12\r\n-3\n"), Progress::Done(Ok(Start::At(12))));
        assert_eq!(scan(b"\n12"), Progress::Done(Err(HeaderError::Empty)));
        assert_eq!(scan(b"12"), Progress::NeedMore);
        assert_eq!(scan(b""), Progress::NeedMore);
        assert_eq!(at_eof(b"12"), Ok(Start::At(12)));
        assert_eq!(at_eof(b""), Err(HeaderError::Empty));
    }

    #[test]
    fn resolve_table() {
        let cases = [
            (Start::At(0), 100, 0),
            (Start::At(1000), 100, 1000),
            (Start::FromEnd(0), 100, 100),
            (Start::FromEnd(10), 100, 90),
            (Start::FromEnd(100), 100, 0),
            (Start::FromEnd(1000), 100, 0),
            (Start::FromEnd(1 << 63), u64::MAX, u64::MAX - (1 << 63)),
            (Start::At(5 << 30), 0, 5 << 30),
        ];
        for (start, size, want) in cases {
            assert_eq!(start.resolve(size), Some(want), "{start:?} at size {size}");
        }
    }

    proptest! {
        #[test]
        fn every_i64_round_trips(n in any::<i64>(), pad_l in "[ \t\r]{0,4}", pad_r in "[ \t\r]{0,4}") {
            let text = format!("{pad_l}{n}{pad_r}");
            let want = if n < 0 { Start::FromEnd(n.unsigned_abs()) } else { Start::At(n as u64) };
            prop_assert_eq!(parse(text.as_bytes()), Ok(want));
        }

        #[test]
        fn every_line_count_round_trips(n in 0..=i64::MAX, pad_l in "[ \t\r]{0,4}", pad_r in "[ \t\r]{0,4}") {
            prop_assert_eq!(parse(format!("{pad_l}n{n}{pad_r}").as_bytes()), Ok(Start::Lines(n as u64)));
        }

        #[test]
        fn explicit_plus_is_the_same_as_no_sign(n in 0..=i64::MAX) {
            prop_assert_eq!(parse(format!("+{n}").as_bytes()), parse(n.to_string().as_bytes()));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_the_grammar(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(start) = parse(&bytes) {
                let text = std::str::from_utf8(&bytes).expect("accepted headers are ASCII");
                let core = text.trim_matches([' ', '\t', '\r']);
                if let Some(count) = core.strip_prefix('n') {
                    prop_assert!(count.bytes().all(|b| b.is_ascii_digit()));
                    let value: u64 = count.parse().expect("a line count");
                    prop_assert!(value <= i64::MAX as u64);
                    prop_assert_eq!(start, Start::Lines(value));
                    return Ok(());
                }
                let value: i128 = core.parse().expect("accepted headers are integers");
                prop_assert!(value >= i128::from(i64::MIN) && value <= i128::from(i64::MAX));
                let want = if core.starts_with('-') { Start::FromEnd(value.unsigned_abs() as u64) } else { Start::At(value as u64) };
                prop_assert_eq!(start, want);
            }
        }

        #[test]
        fn values_beyond_i64_overflow(extra in 1u64..1_000_000) {
            let big = i64::MAX as u128 + u128::from(extra);
            prop_assert_eq!(parse(big.to_string().as_bytes()), Err(HeaderError::Overflow));
            let below = (1u128 << 63) + u128::from(extra);
            prop_assert_eq!(parse(format!("-{below}").as_bytes()), Err(HeaderError::Overflow));
        }

        #[test]
        fn resolved_offsets_never_precede_the_start_or_overshoot_the_end(n in any::<u64>(), size in any::<u64>()) {
            let from_end = Start::FromEnd(n).resolve(size).expect("bytes resolve");
            prop_assert!(from_end <= size);
            prop_assert_eq!(size - from_end, n.min(size));
            prop_assert_eq!(Start::At(n).resolve(size), Some(n));
            prop_assert_eq!(Start::Lines(n).resolve(size), None);
        }
    }
}
