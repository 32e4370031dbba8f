//! The served file: temp directories, deterministic content, appends, and byte comparisons.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Byte `i` of the deterministic test content.
///
/// Why this shape? Every byte depends on its position with a period far above any chunk or
/// buffer size, so data sent from a wrong offset or out of order does not compare equal.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) + i / 251 + i / 65_537) as u8
}

/// Bytes `start..start + len` of the test content.
pub fn pattern_range(start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64).map(pattern).collect()
}

/// Asserts `got == want` without printing megabytes: reports lengths and the first difference.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    let show = |b: &[u8], at: usize| {
        let end = (at + 16).min(b.len());
        format!("{:?}", String::from_utf8_lossy(&b[at.min(end)..end]))
    };
    match first {
        Some(i) => panic!(
            "{what}: bytes differ at index {i} (got {} bytes, want {}): got {} want {}; \
             differing ranges: {}",
            got.len(),
            want.len(),
            show(got, i),
            show(want, i),
            differing_ranges(got, want)
        ),
        None => panic!(
            "{what}: got {} bytes, want {} (one is a prefix of the other)",
            got.len(),
            want.len()
        ),
    }
}

/// The index ranges where `got` and `want` differ (over their common length), summarised.
fn differing_ranges(got: &[u8], want: &[u8]) -> String {
    let mut ranges = Vec::new();
    let mut start = None;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        match (a != b, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                ranges.push(format!("{s}..{i}"));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        ranges.push(format!("{s}..{}", got.len().min(want.len())));
    }
    let total = ranges.len();
    if total > 9 {
        let last = ranges.pop().unwrap_or_default();
        ranges.truncate(8);
        ranges.push(format!("({} more)", total - 9));
        ranges.push(last);
    }
    ranges.join(", ")
}

/// A small seeded PRNG (splitmix64): reproducible runs without the rand crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A directory under the system temp dir, unique to this test, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "tailsrv-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Appends `bytes` to the file at `path`, creating it if needed.
pub fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
}

/// Appends pattern bytes `start..start + len` to `path`, a MiB at a time.
pub fn append_pattern(path: &Path, start: u64, len: u64) {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut at = start;
    while at < start + len {
        let n = (start + len - at).min(1 << 20) as usize;
        file.write_all(&pattern_range(at, n))
            .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
        at += n as u64;
    }
}
