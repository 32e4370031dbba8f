//! The bench's unsafe edge: the Linux calls the client engine and the reference server make
//! themselves, each wrapped in a safe function.
//!
//! What tailsrv's own `tailsrv::sys` already wraps (socket addresses, binding a listener,
//! `sendfile`, `recv`, SO_LINGER, errno checks, setsockopt) is called from there rather than
//! written twice; this module holds only what the server never needs: client connects,
//! epoll, the file mapping, clocks and process limits.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use tailsrv::sys::{check, check_size, setsockopt};

/// CLOCK_MONOTONIC in nanoseconds: the clock the writer stamps records with and clients read
/// on receipt. It is one clock for every process on the machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises RLIMIT_NOFILE to at least `want` (soft and, where allowed, hard). Returns the soft
/// limit in force afterwards, which may be lower than `want` for an unprivileged user.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    // SAFETY: rlimit is plain data, filled by getrlimit.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    if lim.rlim_max < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: `raised` is a valid rlimit. Only root may raise the hard limit; if this
        // fails we settle for the old hard limit below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(want);
        }
    }
    lim.rlim_cur = lim.rlim_max.min(want);
    // SAFETY: `lim` is a valid rlimit with cur <= max.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

/// User plus system CPU seconds of this whole process so far.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: rusage is plain data, filled by getrusage.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Clock ticks per second, the unit of /proc/PID/stat's CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: plain query with no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Restricts this thread, and every thread it starts from now on, to `cpus`.
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    for &cpu in cpus {
        if cpu < libc::CPU_SETSIZE as usize {
            // SAFETY: CPU_SET writes within the set for indices below CPU_SETSIZE, checked
            // just above.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    // SAFETY: `set` is a valid, initialised cpu_set_t of the size given.
    check(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })
        .map(drop)
}

/// Sends SIGTERM to a process.
pub fn terminate(pid: u32) -> io::Result<()> {
    // SAFETY: plain syscall; a stale pid at worst signals nothing (ESRCH).
    check(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }).map(drop)
}

fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr.ip() {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; on success we own the new descriptor.
    let fd = check(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts a nonblocking connect. Returns the socket and whether it connected at once;
/// otherwise it becomes writable when the handshake ends (see [`socket_error`]).
pub fn connect_start(addr: &SocketAddr) -> io::Result<(OwnedFd, bool)> {
    let sock = tcp_socket(addr)?;
    let (storage, len) = tailsrv::sys::sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let ret = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if ret == 0 {
        return Ok((sock, true));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINPROGRESS) => Ok((sock, false)),
        _ => Err(err),
    }
}

/// The pending error of a socket (SO_ERROR): how a nonblocking connect ended.
pub fn socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` is a writable int and `len` its size.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

pub fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1 as libc::c_int)
}

pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    check_size(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// Receives and drops up to `max` bytes inside the kernel, copying nothing (TCP MSG_TRUNC).
pub fn recv_discard(fd: RawFd, max: usize) -> io::Result<usize> {
    // SAFETY: a null buffer is allowed with MSG_TRUNC on a TCP socket; nothing is written.
    check_size(unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            max,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    })
}

/// Accepts one pending connection as a nonblocking socket; `None` when there is none.
pub fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: null address pointers are allowed: we do not ask for the peer's address.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// An epoll instance. Tokens are the caller's; events are copied out of the kernel's
/// (packed) struct so callers never take references into it.
pub struct Epoll(OwnedFd);

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; on success we own the new descriptor.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout_ms` (-1: forever) and appends `(events, token)` pairs to `out`.
    pub fn wait(
        &self,
        raw: &mut [libc::epoll_event],
        out: &mut Vec<(u32, u64)>,
        timeout_ms: i32,
    ) -> io::Result<()> {
        out.clear();
        // SAFETY: `raw` is writable for `raw.len()` events.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                raw.as_mut_ptr(),
                raw.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        for ev in &raw[..n as usize] {
            // Copy the packed fields out by value.
            let (events, token) = (ev.events, ev.u64);
            out.push((events, token));
        }
        Ok(())
    }
}

/// A read-only shared mapping of a file, larger than the file so that it covers what is
/// appended later.
pub struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until drop; any thread may read it.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared reads of immutable (append-only) file bytes.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(fd: RawFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh PROT_READ, MAP_SHARED mapping chosen by the kernel; nothing aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The mapped bytes `[start, start + len)`.
    ///
    /// # Safety
    /// The range must lie within the mapping and within the file's size at the time of the
    /// call (a page wholly past the end of the file faults with SIGBUS), and the file must
    /// never be truncated below it while the slice lives. The harness only appends.
    pub unsafe fn bytes(&self, start: usize, len: usize) -> &[u8] {
        debug_assert!(start + len <= self.len);
        // SAFETY: the caller keeps the range inside the mapping and the file.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned and was asked for.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
