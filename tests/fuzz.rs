//! A seeded network-level fuzz run: thousands of random headers, sent in random pieces with
//! random pauses and ended in random ways, while ordinary clients keep receiving appends.
//!
//! What must hold: the server neither panics nor stops; no header that breaks the grammar
//! gets a byte of the file; valid headers in odd shapes get exactly the right bytes; the
//! ordinary clients get every byte; and once the fuzz clients are gone the server's
//! descriptors are back where they started. Set `TAILSRV_FUZZ_SEED` to replay a run.

use crate::common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const WORKERS: u64 = 8;
const CASES_PER_WORKER: u64 = 300;
const INITIAL: u64 = 100_000;
/// Appended records are at most this long.
const RECORD: u64 = 200;
/// At-offsets beyond the end of the file go at most this far; the run ends by growing the
/// file past them, so that their clients get data and, having left, are found gone.
const BEYOND: u64 = 20_000;
/// How many file bytes a fuzz client with a valid header reads before it leaves.
const TASTE: usize = 300;

/// What the header's grammar says about some bytes, decided without the server's parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Must get no file data.
    Invalid,
    /// `n`/`+n`: starts at n.
    At(u64),
    /// `-n`: starts n bytes before the end when the header is read.
    FromEnd(u64),
    /// Near a boundary (19 or more digits): either answer is acceptable here; the unit
    /// tests pin it down.
    Unsure,
}

/// Judges a header line (the bytes before the newline, or all of them at a half-close).
fn judge(line: &[u8]) -> Verdict {
    if line.len() >= 64 || !line.is_ascii() {
        return Verdict::Invalid;
    }
    let pad = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let Some(start) = line.iter().position(|b| !pad(b)) else {
        return Verdict::Invalid;
    };
    let end = line.iter().rposition(|b| !pad(b)).unwrap() + 1;
    let text = &line[start..end];
    let (negative, digits) = match text[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Verdict::Invalid;
    }
    let significant = digits.iter().skip_while(|&&d| d == b'0').count();
    if significant >= 19 {
        return Verdict::Unsure;
    }
    let value: u64 = std::str::from_utf8(digits).unwrap().parse().unwrap();
    if negative {
        Verdict::FromEnd(value)
    } else {
        Verdict::At(value)
    }
}

#[test]
fn the_grammar_oracle_agrees_with_the_documented_examples() {
    for (line, want) in [
        (&b"0"[..], Verdict::At(0)),
        (b" +12\r", Verdict::At(12)),
        (b"\t-0 ", Verdict::FromEnd(0)),
        (b"007", Verdict::At(7)),
        (b"", Verdict::Invalid),
        (b" \r", Verdict::Invalid),
        (b"1 2", Verdict::Invalid),
        (b"+-1", Verdict::Invalid),
        (b"12a", Verdict::Invalid),
        (b"\xff1", Verdict::Invalid),
        (b"9223372036854775807", Verdict::Unsure),
        (&[b'1'; 64], Verdict::Invalid),
    ] {
        assert_eq!(judge(line), want, "{:?}", String::from_utf8_lossy(line));
    }
}

/// How a fuzz client leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// close(): a FIN, or a reset if the server sent data it did not read.
    Close,
    /// SO_LINGER 0 and close(): a reset.
    Reset,
    /// shutdown(SHUT_WR), then read what the verdict says it should get.
    HalfClose,
    /// Stays open and reads what the verdict says it should get (only with a newline).
    Read,
}

/// A random header: bytes that are sometimes valid in odd shapes, often not.
fn header(rng: &mut Rng, size: u64) -> Vec<u8> {
    let pick = |rng: &mut Rng, from: &[u8]| from[rng.below(from.len() as u64) as usize];
    let pads =
        |rng: &mut Rng| -> Vec<u8> { (0..rng.below(4)).map(|_| pick(rng, b" \t\r")).collect() };
    let mut h = Vec::new();
    match rng.below(6) {
        // Valid, odd: padding, signs, leading zeros, offsets in and a little beyond the file.
        0..=2 => {
            h.extend(pads(rng));
            let value = match rng.below(4) {
                0 => rng.below(size),
                1 => size + rng.below(BEYOND),
                2 => rng.below(2 * RECORD),
                _ => 0,
            };
            let sign = pick(rng, b"+- ");
            if sign != b' ' {
                h.push(sign);
            }
            h.extend((0..rng.below(3)).map(|_| b'0'));
            h.extend(value.to_string().bytes());
            h.extend(pads(rng));
            if rng.below(8) != 0 {
                h.push(b'\n');
            }
        }
        // Header-like bytes in a random order.
        3 | 4 => {
            for _ in 0..rng.below(80) {
                h.push(pick(rng, b"0123456789+-- \t\r\n\nx\x00\xff"));
            }
        }
        // Anything at all.
        _ => h.extend((0..rng.below(100)).map(|_| rng.below(256) as u8)),
    }
    if rng.below(4) == 0 {
        // Trailing input after the header, which the server must ignore.
        h.extend((0..rng.below(20)).map(|_| rng.below(256) as u8));
    }
    h
}

/// The first `n` bytes of the file can only be `pattern`: checks `got` starts somewhere in
/// `lo..=hi`.
fn starts_in(got: &[u8], lo: u64, hi: u64) -> bool {
    (lo..=hi).any(|o| {
        got.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(o + i as u64))
    })
}

/// Reads until `n` bytes came or the connection ended; returns the bytes and whether it
/// ended (FIN or reset) before `n`.
fn read_up_to(stream: &mut TcpStream, n: usize) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = vec![0u8; n];
    let mut len = 0;
    while len < n {
        match stream.read(&mut got[len..]) {
            Ok(0) => return (got[..len].to_vec(), true),
            Ok(k) => len += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return (got[..len].to_vec(), true)
            }
            Err(e) => panic!("after {len} of {n} bytes: {e}"),
        }
    }
    (got, false)
}

/// How many fuzz clients were checked, by outcome: a run that checks nothing fails.
#[derive(Default)]
struct Tally {
    /// Invalid headers seen closed without data.
    refused: AtomicU64,
    /// Valid headers seen to get the right bytes.
    served: AtomicU64,
}

/// One fuzz client. Returns, for a client that left with a FIN before any data after a start
/// the server may take as an offset, that offset (`u64::MAX` if unsure): the server holds
/// such a client until it has something to send it (it looks just like a half-close).
fn fuzz_one(port: u16, rng: &mut Rng, size: &AtomicU64, case: u64, tally: &Tally) -> Option<u64> {
    let before = size.load(Ordering::Acquire);
    let bytes = header(rng, before);
    let newline = bytes.iter().position(|&b| b == b'\n');
    let leave = match rng.below(4) {
        0 => Leave::Close,
        1 => Leave::Reset,
        2 => Leave::HalfClose,
        _ if newline.is_some() => Leave::Read,
        _ => Leave::HalfClose,
    };
    let verdict = match newline {
        Some(i) => judge(&bytes[..i]),
        None if bytes.len() >= 64 => Verdict::Invalid,
        // A half-close or a close ends the header as a newline would.
        None if matches!(leave, Leave::HalfClose | Leave::Close) => judge(&bytes),
        // No newline and still open: the header timeout closes it.
        None => Verdict::Invalid,
    };
    let mut stream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => panic!("case {case}: connecting: {e}"),
    };
    stream.set_nodelay(true).unwrap();
    // Random pieces with random pauses; the server may close first (bad header), so
    // writes may fail.
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len() as u64) as usize;
        if stream.write_all(&rest[..n]).is_err() {
            break;
        }
        rest = &rest[n..];
        let pause = match rng.below(40) {
            0 => 100 + rng.below(200),
            k if k < 20 => rng.below(10),
            _ => 0,
        };
        if pause > 0 {
            thread::sleep(Duration::from_millis(pause));
        }
    }
    let what = || {
        format!(
            "case {case}: header {:?}, {leave:?}",
            String::from_utf8_lossy(&bytes)
        )
    };
    match leave {
        Leave::Close => {
            drop(stream);
            return match verdict {
                Verdict::At(n) => Some(n),
                Verdict::Unsure => Some(u64::MAX),
                _ => None,
            };
        }
        Leave::Reset => {
            let _ = tailsrv::sys::set_linger_zero(std::os::fd::AsRawFd::as_raw_fd(&stream));
            drop(stream);
            return None;
        }
        Leave::HalfClose => {
            let _ = stream.shutdown(Shutdown::Write);
        }
        Leave::Read => {}
    }
    match verdict {
        Verdict::Invalid => {
            let (got, ended) = read_up_to(&mut stream, 1);
            assert!(
                got.is_empty() && ended,
                "{}: an invalid header got data",
                what()
            );
            tally.refused.fetch_add(1, Ordering::Relaxed);
        }
        Verdict::At(n) => {
            // A start beyond the end waits for the file to grow that far: taste only
            // offsets already there.
            if n + TASTE as u64 <= before {
                let (got, ended) = read_up_to(&mut stream, TASTE);
                assert!(!ended, "{}: closed after {} bytes", what(), got.len());
                assert!(starts_in(&got, n, n), "{}: wrong bytes", what());
                tally.served.fetch_add(1, Ordering::Relaxed);
            } else {
                // Left without data: held like a FIN-closed client until data reaches it.
                return Some(n);
            }
        }
        Verdict::FromEnd(n) => {
            let (got, ended) = read_up_to(&mut stream, TASTE);
            assert!(!ended, "{}: closed after {} bytes", what(), got.len());
            let after = size.load(Ordering::Acquire) + RECORD;
            let (lo, hi) = (before.saturating_sub(n), after.saturating_sub(n));
            assert!(starts_in(&got, lo, hi), "{}: not from {lo}..={hi}", what());
            tally.served.fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Unsure => return Some(u64::MAX),
    }
    // Leaving with a FIN after data flowed: the server's next send draws a reset.
    None
}

#[test]
fn random_headers_never_disturb_the_server_or_its_other_clients() {
    let seed: u64 = std::env::var("TAILSRV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7a11_5e7f);
    eprintln!("fuzz seed {seed} (TAILSRV_FUZZ_SEED replays it)");
    let mut server = Server::builder()
        .contents(&pattern_range(0, INITIAL as usize))
        .args(["--header-timeout", "1"])
        .start();
    let port = server.port();
    let baseline = server.fd_count();
    let size = AtomicU64::new(INITIAL);
    let stop = AtomicBool::new(false);
    let normal: Vec<Client> = (0..4).map(|_| server.connect(b"0\n")).collect();
    // Where the ordinary clients must get to; known once the run is over.
    let target = AtomicU64::new(u64::MAX);
    let tally = Tally::default();

    let held = thread::scope(|s| {
        let readers: Vec<_> = normal
            .into_iter()
            .map(|c| {
                let target = &target;
                s.spawn(move || read_along(c.into_stream(), target))
            })
            .collect();
        let appender = s.spawn(|| {
            let mut rng = Rng::new(seed ^ 0xa99e);
            while !stop.load(Ordering::Acquire) {
                let at = size.load(Ordering::Acquire);
                let n = 1 + rng.below(RECORD);
                append_pattern(server.path(), at, n);
                size.store(at + n, Ordering::Release);
                thread::sleep(Duration::from_millis(2));
            }
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (size, tally) = (&size, &tally);
                s.spawn(move || {
                    let mut rng = Rng::new(seed.wrapping_add(w));
                    (0..CASES_PER_WORKER)
                        .filter_map(|i| {
                            fuzz_one(port, &mut rng, size, w * CASES_PER_WORKER + i, tally)
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let starts: Vec<u64> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("a fuzz worker"))
            .collect();
        stop.store(true, Ordering::Release);
        appender.join().expect("the appender");
        // Grow past every start a fuzz client asked for, so that those that left get data
        // and are found gone.
        let end = size.load(Ordering::Acquire);
        let last = end + BEYOND + RECORD;
        append_pattern(server.path(), end, last - end);
        target.store(last, Ordering::Release);
        // Starts the file has reached now get data, draw a reset and are let go; any
        // others are held until keepalive finds them gone.
        let held = starts.iter().filter(|&&n| n >= last).count();
        eprintln!("fuzz: the file ends at {last}");
        for r in readers {
            r.join().expect("an ordinary client");
        }
        held
    });

    let (refused, served) = (tally.refused.into_inner(), tally.served.into_inner());
    eprintln!(
        "fuzz: {refused} invalid headers refused, {served} valid ones served, {held} may be held"
    );
    assert!(
        refused >= 200 && served >= 200,
        "too few checked: {refused} refused, {served} served"
    );
    assert_eq!(server.wait_exit(Duration::ZERO), None, "tailsrv stopped");
    // Clients that left with a FIN are found gone at the next send (checked a second
    // later); those started beyond the end only once the file reaches them (just now).
    assert!(
        poll_until(PATIENCE, || server.fd_count() <= baseline + 4 + held),
        "descriptors: {} now, {baseline} at the start, 4 ordinary clients, {held} may be held",
        server.fd_count()
    );
    let log = server.logs().dump();
    assert!(!log.contains("panicked"), "{log}");
}

/// An ordinary client: reads and checks every byte from 0 as it comes, until `target`
/// (once it is set) is reached; panics if it gets there late or a byte is wrong.
fn read_along(mut stream: TcpStream, target: &AtomicU64) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    let mut deadline = None;
    while at < target.load(Ordering::Acquire) {
        if target.load(Ordering::Acquire) != u64::MAX {
            let d = *deadline.get_or_insert_with(|| std::time::Instant::now() + PATIENCE);
            assert!(
                std::time::Instant::now() < d,
                "an ordinary client is stuck at {at}"
            );
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!("an ordinary client was closed at {at}"),
            Ok(n) => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    assert_eq!(
                        b,
                        pattern(at + i as u64),
                        "an ordinary client's byte {}",
                        at + i as u64
                    );
                }
                at += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("an ordinary client at {at}: {e}"),
        }
    }
}
