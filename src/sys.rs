//! The unsafe edge: the Linux system calls tailsrv makes itself, each wrapped in a safe function.
//!
//! The `pub` items are also the bench's toolkit (benches/fanout builds its reference server
//! and its clients from them): checking a return value, socket options, binding a
//! SO_REUSEPORT group, sendfile and non-blocking receives. The rest is for tailsrv alone.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

/// A system call's return value as a result: negative means `errno` says what went wrong.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The same for calls that return a byte count.
pub fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Copies up to `count` bytes of `file` from `offset` to the socket, inside the kernel.
///
/// The socket is non-blocking, so this returns `WouldBlock` when its buffer is full and a
/// short count when only part fits. The file position is not used or changed, so shards may
/// share one descriptor.
pub fn sendfile(
    socket: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    // SAFETY: both are descriptors the caller owns for the duration of the call, and `off`
    // is a valid, writable off_t.
    check_size(unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, count) })
}

/// The size of the file behind `fd`, and its link count.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of a `stat`, which fstat fills on success.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

/// Reads what the peer has sent, if anything, without waiting.
pub fn recv_now(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_size(unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    })
}

/// Sends what the socket takes of `buf` now, without waiting; never raises SIGPIPE.
pub(crate) fn send_now(socket: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    check_size(unsafe {
        libc::send(
            socket.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Discards whatever the peer has sent and is waiting in the socket, without copying it.
/// Returns how many bytes were dropped; `Ok(0)` means the peer closed its sending side.
pub fn discard_input(socket: BorrowedFd<'_>) -> io::Result<usize> {
    // Why MSG_TRUNC? On TCP it drops the bytes inside the kernel, so a client that floods us
    // after its header costs no copy and needs no buffer.
    // SAFETY: a null buffer is allowed with MSG_TRUNC on a TCP socket; nothing is written.
    check_size(unsafe {
        libc::recv(
            socket.as_raw_fd(),
            std::ptr::null_mut(),
            1 << 20,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    })
}

/// Makes a descriptor non-blocking.
///
/// Why? glommio's sockets are blocking (it passes MSG_DONTWAIT to each send and recv
/// instead), but sendfile takes no flags: on a blocking socket a client that stops reading
/// would park its whole shard inside sendfile.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // A socket's only file status flag that matters here is O_NONBLOCK, so there is
    // nothing to read back and preserve first.
    // SAFETY: plain fcntl on a descriptor the caller owns.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) }).map(drop)
}

/// A value [`setsockopt`] may pass: plain data the kernel reads `size_of::<Self>()` bytes of.
///
/// Why sealed? Some options take structures that hold pointers (`SO_ATTACH_FILTER`'s
/// `sock_fprog`, for one); passed by mistake, the kernel would follow whatever the pointer
/// says. Only the types below, which hold no pointers, can be passed, and no one outside
/// this module can add another.
///
/// ```
/// # let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// # use std::os::fd::AsFd;
/// tailsrv::sys::setsockopt(socket.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1 as libc::c_int)
///     .unwrap();
/// ```
///
/// A pointer, or anything holding one, does not compile:
///
/// ```compile_fail
/// # let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// # use std::os::fd::AsFd;
/// let program: *const u8 = std::ptr::null();
/// const SO_ATTACH_FILTER: libc::c_int = 26;
/// tailsrv::sys::setsockopt(socket.as_fd(), libc::SOL_SOCKET, SO_ATTACH_FILTER, program);
/// ```
pub trait SockOptValue: sealed::Sealed + Copy {}

mod sealed {
    /// Implemented only here, so [`super::SockOptValue`] cannot be implemented elsewhere.
    pub trait Sealed {}
    impl Sealed for libc::c_int {}
    impl Sealed for libc::c_uint {}
    impl Sealed for libc::linger {}
    impl Sealed for libc::timeval {}
}

impl SockOptValue for libc::c_int {}
impl SockOptValue for libc::c_uint {}
impl SockOptValue for libc::linger {}
impl SockOptValue for libc::timeval {}

/// Sets a socket option to a plain value (an integer, a `linger`, a `timeval`).
pub fn setsockopt<T: SockOptValue>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: `value` lives for the call, its size is passed alongside it, and it holds no
    // pointer for the kernel to follow (`SockOptValue` is sealed to pointer-free types).
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Turns on TCP keepalive so peers that vanished without a trace are found, and bounds how
/// long sent data may go unacknowledged by the same total.
///
/// Why TCP_USER_TIMEOUT too? Keepalive only probes idle connections; a peer that vanished
/// while data was in flight would otherwise hold its connection for the kernel's full
/// retransmission schedule (about 15 minutes). A live client that merely stops reading is
/// not affected: it keeps answering the zero-window probes.
pub(crate) fn set_keepalive(
    socket: BorrowedFd<'_>,
    idle_secs: i32,
    interval_secs: i32,
    count: i32,
) -> io::Result<()> {
    setsockopt(
        socket,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        1 as libc::c_int,
    )?;
    setsockopt(socket, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_secs)?;
    setsockopt(
        socket,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        interval_secs,
    )?;
    setsockopt(socket, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)?;
    let total_ms = (idle_secs + interval_secs * count) as libc::c_uint * 1000;
    setsockopt(socket, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, total_ms)
}

/// Whether the kernel has closed this TCP connection (it received a reset, or timed out).
pub(crate) fn tcp_is_closed(socket: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` is a valid socklen_t.
    check(unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    })?;
    const TCP_CLOSE: u8 = 7;
    Ok(info.tcpi_state == TCP_CLOSE)
}

/// Makes the coming close send a reset and drop unsent data, instead of a FIN after it.
pub fn set_linger_zero(socket: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(socket, libc::SOL_SOCKET, libc::SO_LINGER, linger)
}

/// Stops a listening socket listening, at once: connections in its backlog are reset, and
/// the port no longer counts as in use, even while another reference to the socket lives
/// on (an io_uring accept the kernel has not finished cancelling, a process still exiting).
pub(crate) fn stop_listening(listener: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller keeps open for the call.
    check(unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) }).map(drop)
}

/// Shuts down the sending side: the peer gets a FIN once everything queued has gone out.
pub(crate) fn shutdown_write(socket: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller owns.
    check(unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// A socket address in the form the socket calls take.
pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address a socket is bound to.
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is writable for `len` bytes.
    check(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET socket.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 socket.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        family => Err(io::Error::other(format!(
            "unexpected address family {family}"
        ))),
    }
}

fn tcp_socket(addr: &SocketAddr, reuse_port: bool) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(
        fd.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        1 as libc::c_int,
    )?;
    if reuse_port {
        setsockopt(
            fd.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            1 as libc::c_int,
        )?;
    }
    if addr.is_ipv6() {
        // Why explicit? An unspecified IPv6 address is meant to take IPv4 too, whatever the
        // system's bindv6only default says; a specific one binds just itself either way.
        let v6only = !addr.ip().is_unspecified();
        setsockopt(
            fd.as_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            v6only as libc::c_int,
        )?;
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// Binds `count` listening sockets to one address and port with SO_REUSEPORT, so the kernel
/// spreads incoming connections over them. Port 0 picks a free port, shared by all.
///
/// Why a probe first? SO_REUSEPORT lets any socket of the same user join the group, so a
/// second tailsrv on the same port would silently steal half the clients. Binding once
/// without it first turns "port in use" into the error it should be.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    let mut addr = addr;
    if addr.port() != 0 {
        drop(tcp_socket(&addr, false)?);
    }
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let fd = tcp_socket(&addr, true)?;
        if addr.port() == 0 {
            addr = local_addr(fd.as_fd())?;
        }
        // SAFETY: plain syscall on a socket we own.
        check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
        listeners.push(fd);
    }
    Ok((addr, listeners))
}

/// Hands a bound, listening TCP socket over to glommio, on the executor that will accept on it.
///
/// The descriptor of a glommio TCP stream, borrowed for as long as the stream is.
///
/// Why here? glommio 0.9's streams give out only their `RawFd` (no `AsFd`); every safe
/// function in this module takes a `BorrowedFd`.
pub(crate) fn stream_fd(stream: &glommio::net::TcpStream) -> BorrowedFd<'_> {
    // SAFETY: a glommio TcpStream owns its socket (a std TcpStream inside it) and closes it
    // only when it drops; the borrow returned cannot outlive `stream`.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// Why take an `OwnedFd`? glommio 0.9 adopts listeners only through `FromRawFd`, which
/// trusts its caller to give up the descriptor and to give a listening socket. Taking it
/// owned means nobody else can still close it; the listening part is up to the callers
/// ([`bind_listeners`], a bound `std::net::TcpListener`).
pub(crate) fn adopt_listener(listener: OwnedFd) -> glommio::net::TcpListener {
    // SAFETY: `listener` is a listening TCP socket (see above) that we own; ownership moves
    // to glommio, which closes it when the listener drops.
    unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and every thread it starts from now on) and
/// returns a signalfd that becomes readable when one arrives.
pub(crate) fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes one pending signal from a signalfd, if any.
pub(crate) fn read_signal(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data; all zeroes is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
    let size = size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is writable for `size` bytes.
    match check_size(unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    }) {
        Ok(n) if n == size => Ok(Some(info.ssi_signo as i32)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// A non-blocking eventfd: a flag one thread sets to wake another (here, the watcher).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, making it readable (and keeping it so: nobody reads it).
pub(crate) fn eventfd_bump(fd: BorrowedFd<'_>) -> io::Result<()> {
    eventfd_add(fd, 1)
}

/// Adds `value` to an eventfd's counter, making it readable.
pub(crate) fn eventfd_add(fd: BorrowedFd<'_>, value: u64) -> io::Result<()> {
    // SAFETY: `value` is 8 readable bytes, the size an eventfd write takes.
    check_size(unsafe { libc::write(fd.as_raw_fd(), (&value as *const u64).cast(), 8) }).map(drop)
}

/// Takes an eventfd's counter back to zero, so that it is no longer readable; returns what it
/// held (0 if it was not set).
pub(crate) fn eventfd_take(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut count: u64 = 0;
    // SAFETY: `count` is 8 writable bytes, the size an eventfd read fills.
    match check_size(unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) }) {
        Ok(_) => Ok(count),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// A pipe, both ends close-on-exec: `(read end, write end, capacity)`. Its capacity is
/// raised to `size` bytes where the system allows (`/proc/sys/fs/pipe-max-size`, 1 MiB by
/// default); a pipe that keeps the default 64 KiB works too, only with more calls per byte.
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two fresh descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int; a refusal (EPERM above the limit) leaves the pipe
    // as it was, which is fine.
    let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    // SAFETY: F_GETPIPE_SZ takes no argument and returns the capacity.
    let capacity = check(unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) })?;
    Ok((read, write, capacity as usize))
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel, one of them a pipe
/// (splice(2)). An offset, where given, says where in a regular file to read or write, and
/// the file's own position is left alone. Returns 0 at the end of the input.
///
/// A blocking socket as `from` waits as `recv` would, and its receive timeout applies:
/// `WouldBlock` when it expires.
pub fn splice(
    from: BorrowedFd<'_>,
    from_offset: Option<u64>,
    to: BorrowedFd<'_>,
    to_offset: Option<u64>,
    len: usize,
) -> io::Result<usize> {
    let mut from_off = from_offset.map(|o| o as libc::loff_t);
    let mut to_off = to_offset.map(|o| o as libc::loff_t);
    let ptr =
        |o: &mut Option<libc::loff_t>| o.as_mut().map_or(std::ptr::null_mut(), |o| o as *mut _);
    let (from_ptr, to_ptr) = (ptr(&mut from_off), ptr(&mut to_off));
    // SAFETY: both descriptors are borrowed open for the call; each offset pointer is null or
    // points to a loff_t on this stack that outlives the call.
    check_size(unsafe {
        libc::splice(
            from.as_raw_fd(),
            from_ptr,
            to.as_raw_fd(),
            to_ptr,
            len,
            libc::SPLICE_F_MOVE,
        )
    })
}

/// Blocks the calling thread until `fd` is readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `poll` is one valid pollfd.
        match check(unsafe { libc::poll(&mut poll, 1, -1) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or cgroups set it).
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: `set` is writable for its own size.
    check(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) })?;
    // SAFETY: CPU_ISSET reads a set the kernel filled, for indices within its size.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The type of getrlimit's resource argument, which differs between C libraries.
#[cfg(any(target_env = "gnu", target_env = "uclibc"))]
type RlimitResource = libc::__rlimit_resource_t;
/// The type of getrlimit's resource argument, which differs between C libraries.
#[cfg(not(any(target_env = "gnu", target_env = "uclibc")))]
type RlimitResource = libc::c_int;

/// Raises a resource's soft limit to its hard limit; returns the new soft limit.
fn raise_soft_limit(resource: RlimitResource) -> io::Result<u64> {
    // SAFETY: rlimit is plain data, filled by getrlimit.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    check(unsafe { libc::getrlimit(resource, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit.
        check(unsafe { libc::setrlimit(resource, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// Takes an exclusive advisory lock (flock) on an open file without waiting;
/// `WouldBlock` when another open file description holds one.
pub(crate) fn try_lock_exclusive(file: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain flock on a descriptor the caller holds open for the call.
    check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(drop)
}

/// The soft limit on open descriptors (RLIMIT_NOFILE), as it is now.
pub(crate) fn nofile_limit() -> io::Result<u64> {
    // SAFETY: rlimit is plain data, filled by getrlimit.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok(lim.rlim_cur)
}

/// Raises the soft limit on open descriptors to the hard limit; returns the new limit.
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    raise_soft_limit(libc::RLIMIT_NOFILE)
}

/// Raises the soft limit on locked memory to the hard limit; returns the new soft limit.
pub(crate) fn raise_memlock_limit() -> io::Result<u64> {
    raise_soft_limit(libc::RLIMIT_MEMLOCK)
}

/// Whether `fd` is readable right now, without reading anything (poll(2) with no wait).
pub(crate) fn is_readable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd; a zero timeout never blocks.
    let n = check(unsafe { libc::poll(&mut p, 1, 0) })?;
    Ok(n > 0 && p.revents & libc::POLLIN != 0)
}

/// Resolves once `fd` is readable, or has an error or hang-up to report, waiting through the
/// current glommio executor's io_uring: no thread sleeps in poll(2) for it.
///
/// Why a socket wrapper around a descriptor that is not a socket? glommio 0.9 has no public
/// way to await an arbitrary descriptor, but a stream it adopts arms an io_uring poll for
/// POLLIN at once and wakes the task that reads when it fires. Its read then tries `recv`,
/// which fails at once with ENOTSOCK on an inotify or signal descriptor: any answer at all
/// means the poll fired. The wrapper owns a duplicate, so closing it leaves `fd` open. The
/// cost is a dup and a close per wait, no thread and no timer.
pub(crate) async fn readable(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use futures_lite::AsyncRead;
    use std::os::fd::IntoRawFd;
    let dup = fd.try_clone_to_owned()?;
    // SAFETY: `dup` is a descriptor we own; ownership moves to the stream, which closes it
    // when dropped. The stream is only polled for readability, never read from or written to
    // as a socket: its recv fails with ENOTSOCK without touching the descriptor's data.
    let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(dup.into_raw_fd()) };
    let mut nothing = [0u8; 1];
    futures_lite::future::poll_fn(|cx| {
        std::pin::Pin::new(&mut stream)
            .poll_read(cx, &mut nothing)
            .map(|_| ())
    })
    .await;
    Ok(())
}

/// How long to wait before looking again when a descriptor cannot be awaited for want of a
/// spare descriptor.
const NO_DESCRIPTOR_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Resolves once `fd` is readable, or after a short while if that cannot be awaited.
///
/// Why the fallback? Waiting through io_uring takes a duplicate of the descriptor for a
/// moment ([`readable`]), and a server flooded with clients can have none left (EMFILE).
/// The waiter must not stop then: it looks again every 10 ms until descriptors come back,
/// and its callers treat the answer as "may be readable".
pub(crate) async fn readable_or_soon(fd: BorrowedFd<'_>) -> io::Result<()> {
    match readable(fd).await {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            glommio::timer::Timer::new(NO_DESCRIPTOR_RETRY).await;
            Ok(())
        }
        other => other,
    }
}

/// A new epoll set, for a shard's sockets waiting for room (see `shard::wake_drained`).
pub(crate) fn epoll() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds `socket` to `epoll`, edge-triggered on room to write (errors and hang-ups are always
/// reported too); `key` comes back with its events.
pub(crate) fn epoll_add_room(
    epoll: BorrowedFd<'_>,
    socket: BorrowedFd<'_>,
    key: u64,
) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLOUT | libc::EPOLLET) as u32,
        u64: key,
    };
    // SAFETY: `event` is a valid epoll_event; the kernel copies it.
    check(unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            socket.as_raw_fd(),
            &mut event,
        )
    })
    .map(drop)
}

/// Takes `socket` out of `epoll`.
pub(crate) fn epoll_forget(epoll: BorrowedFd<'_>, socket: BorrowedFd<'_>) -> io::Result<()> {
    let mut unused = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: `unused` is a valid epoll_event (old kernels want one even for a delete).
    check(unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            socket.as_raw_fd(),
            &mut unused,
        )
    })
    .map(drop)
}

/// Collects the keys of the sockets in `epoll` with news, without waiting; returns how many
/// of `keys` it filled.
pub(crate) fn epoll_ready(epoll: BorrowedFd<'_>, keys: &mut [u64]) -> io::Result<usize> {
    const BATCH: usize = 64;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
    let max = keys.len().min(BATCH) as libc::c_int;
    // SAFETY: `events` is writable for `max` entries; a zero timeout never blocks.
    let n = check(unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), max, 0) })?;
    let n = n as usize;
    for (key, event) in keys.iter_mut().zip(&events[..n]) {
        *key = event.u64;
    }
    Ok(n)
}

/// Waits until `fd` (if any) is ready for `events` (`libc::POLLIN`, `libc::POLLOUT`) or `stop`
/// is readable, for at most `timeout` (`None`: as long as it takes). Returns whether each
/// was ready: `(false, false)` when the time ran out or the wait was interrupted.
pub(crate) fn wait_ready_or(
    fd: Option<BorrowedFd<'_>>,
    events: i16,
    stop: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // A negative descriptor is skipped by poll(2).
            fd: fd.map_or(-1, |f| f.as_raw_fd()),
            events,
            revents: 0,
        },
    ];
    // Rounded up, so a wait of 0.1 ms does not become a busy loop of zero-length polls.
    let ms = timeout.map_or(-1, |t| {
        t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
    });
    // SAFETY: `fds` is an array of two valid pollfd structs.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) }) {
        Ok(_) => Ok((fds[1].revents != 0, fds[0].revents != 0)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok((false, false)),
        Err(e) => Err(e),
    }
}

/// Starts connecting a non-blocking TCP socket to `addr`; it is writable once the attempt
/// has ended, and [`take_socket_error`] then says how.
pub(crate) fn connect_nonblocking(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = check(unsafe { libc::socket(family, kind, 0) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    match check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    }) {
        Ok(_) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e),
    }
}

/// The error a socket's last asynchronous operation (a connect) ended with, if any.
pub(crate) fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` is a writable c_int and `len` says so.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    match err {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_listeners_shares_one_port_and_refuses_a_taken_one() {
        let (addr, fds) = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(fds.len(), 3);
        for fd in &fds {
            assert_eq!(local_addr(fd.as_fd()).unwrap(), addr);
        }
        let err = bind_listeners(addr, 1, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn allowed_cpus_is_not_empty() {
        assert!(!allowed_cpus().unwrap().is_empty());
    }
}
