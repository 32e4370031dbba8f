//! wakecost: what it costs a thread to be woken from sleep and go back to sleep, for a glommio
//! executor woken through a shared channel (how the watcher wakes a shard) and for a plain
//! thread woken through an eventfd it waits on in epoll (how a single-thread server waits).
//!
//! ```text
//!   cargo bench --bench wakecost -- [--rate N] [--secs S] [--receiver-cpu C] [--sender-cpu C]
//! ```
//!
//! The sender wakes the receiver `rate` times a second; the figure is the receiver's own CPU
//! time (CLOCK_THREAD_CPUTIME_ID) per wake-up. It is the floor under tailsrv's cost per
//! append: every append that reaches a client wakes the watcher once (from inotify) and each
//! shard with clients waiting once (from the watcher), while a single-thread server wakes
//! once. Results print as a table and as CSV lines; docs/benchmarks.md has a run.

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

struct Options {
    rate: f64,
    secs: f64,
    receiver_cpu: usize,
    sender_cpu: usize,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        rate: 1000.0,
        secs: 5.0,
        receiver_cpu: 0,
        sender_cpu: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(|v| {
                    v.parse::<f64>()
                        .map_err(|_| format!("{name}: `{v}` is not a number"))
                })
        };
        match a.as_str() {
            "--rate" => o.rate = value("--rate")?,
            "--secs" => o.secs = value("--secs")?,
            "--receiver-cpu" => o.receiver_cpu = value("--receiver-cpu")? as usize,
            "--sender-cpu" => o.sender_cpu = value("--sender-cpu")? as usize,
            "--bench" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !(o.rate.is_finite() && o.rate > 0.0 && o.secs.is_finite() && o.secs > 0.0) {
        return Err("--rate and --secs must be positive".into());
    }
    Ok(o)
}

/// This thread's CPU time so far, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Sends `count` wake-ups, one every `1 / rate` seconds, calling `wake` for each.
fn pace(count: u64, rate: f64, mut wake: impl FnMut()) {
    let t0 = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    for i in 0..count {
        let due = t0 + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        wake();
    }
}

/// A glommio executor sleeping on a shared channel of capacity one, rung with `try_send`
/// from another executor, as the watcher rings a shard. Returns (receiver CPU s, wakes).
fn glommio_channel(o: &Options, count: u64) -> Result<(f64, u64), String> {
    let (tx, rx) = shared_channel::new_bounded::<()>(1);
    let receiver = LocalExecutorBuilder::new(Placement::Fixed(o.receiver_cpu))
        .name("wake-receiver")
        .io_memory(64 << 10)
        .spawn(move || async move {
            let rx = rx.connect().await;
            let start = thread_cpu();
            let mut woke = 0u64;
            while rx.recv().await.is_some() {
                woke += 1;
            }
            (thread_cpu() - start, woke)
        })
        .map_err(|e| format!("starting the receiver: {e}"))?;
    let rate = o.rate;
    let sender = LocalExecutorBuilder::new(Placement::Fixed(o.sender_cpu))
        .name("wake-sender")
        .io_memory(64 << 10)
        .spawn(move || async move {
            let tx = tx.connect().await;
            // Why a blocking sleep inside the executor? The sender's own wake-ups are not
            // what is measured; a plain sleep keeps its reactor out of the picture.
            pace(count, rate, || {
                let _ = tx.try_send(());
            });
            drop(tx);
        })
        .map_err(|e| format!("starting the sender: {e}"))?;
    sender.join().map_err(|e| format!("sender: {e}"))?;
    receiver.join().map_err(|e| format!("receiver: {e}"))
}

/// A plain thread waiting in epoll_wait on an eventfd that another thread writes.
fn epoll_eventfd(o: &Options, count: u64) -> Result<(f64, u64), String> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let event = std::sync::Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let reader = event.clone();
    let cpu = o.receiver_cpu;
    let receiver = std::thread::spawn(move || -> Result<(f64, u64), String> {
        pin(cpu);
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(format!("epoll: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `ev` is a valid epoll_event.
        unsafe {
            libc::epoll_ctl(
                ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                reader.as_raw_fd(),
                &mut ev,
            )
        };
        let start = thread_cpu();
        let mut woke = 0u64;
        let mut seen = 0u64;
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        while seen < count {
            // SAFETY: `out` has room for 4 events.
            let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 4, 1000) };
            if n <= 0 {
                continue;
            }
            woke += 1;
            let mut value = 0u64;
            // SAFETY: reads 8 bytes into `value`.
            let r = unsafe { libc::read(reader.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
            if r == 8 {
                seen += value;
            }
        }
        Ok((thread_cpu() - start, woke))
    });
    let cpu = o.sender_cpu;
    let rate = o.rate;
    let writer = event.clone();
    std::thread::spawn(move || {
        pin(cpu);
        pace(count, rate, || {
            let one = 1u64;
            // SAFETY: writes 8 bytes from `one` to an open eventfd.
            unsafe { libc::write(writer.as_raw_fd(), (&one as *const u64).cast(), 8) };
        });
    })
    .join()
    .map_err(|_| "the writer panicked".to_string())?;
    receiver
        .join()
        .map_err(|_| "the receiver panicked".to_string())?
}

/// One way of waking a receiver: returns its CPU seconds and how often it woke.
type Case = fn(&Options, u64) -> Result<(f64, u64), String>;

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu < libc::CPU_SETSIZE as usize {
        // SAFETY: the index is within the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

fn main() -> std::process::ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wakecost: error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let count = (o.rate * o.secs).round() as u64;
    println!(
        "wakecost: {count} wake-ups at {}/s, receiver on CPU {}, sender on CPU {}\n",
        o.rate, o.receiver_cpu, o.sender_cpu
    );
    println!("| receiver | wake-ups | receiver CPU s | CPU us per wake-up |");
    println!("|---|---|---|---|");
    let mut csv = Vec::new();
    let cases: [(&str, Case); 2] = [
        ("epoll + eventfd (thread)", epoll_eventfd),
        ("glommio shared channel", glommio_channel),
    ];
    for (name, case) in cases {
        match case(&o, count) {
            Ok((cpu, woke)) => {
                let per = cpu / woke.max(1) as f64 * 1e6;
                println!("| {name} | {woke} | {cpu:.3} | {per:.1} |");
                csv.push(format!("{name},{woke},{cpu:.4},{per:.2}"));
            }
            Err(e) => {
                eprintln!("wakecost: {name}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("\nreceiver,wakeups,cpu_s,cpu_us_per_wakeup");
    for line in csv {
        println!("{line}");
    }
    std::process::ExitCode::SUCCESS
}
