//! Listening addresses from the command line: IP literals or host names resolved at
//! start-up, and binding them with errors that name the cause.

use crate::error::Error;
use crate::sys;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::str::FromStr;
use tracing::info;

/// A host as given to `--bind` or `--metrics`: an IP literal, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An address literal, used as it is.
    Ip(IpAddr),
    /// A name, resolved once at start-up.
    Name(String),
}

impl FromStr for Host {
    type Err = String;

    /// `127.0.0.1`, `::1`, `[::1]` or a host name such as `localhost`.
    fn from_str(text: &str) -> Result<Host, String> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse() {
            return Ok(Host::Ip(ip));
        }
        let name_ok = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !name_ok {
            return Err(format!("`{text}` is neither an IP address nor a host name"));
        }
        Ok(Host::Name(text.to_string()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl Host {
    /// The addresses to try, in the resolver's order (which /etc/gai.conf may set).
    pub fn resolve(&self, port: u16) -> Result<Vec<SocketAddr>, Error> {
        match self {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
            Host::Name(name) => {
                let found: Vec<SocketAddr> = (name.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| Error::io(format!("resolving {name}"), e))?
                    .collect();
                if found.is_empty() {
                    return Err(Error::Config(format!("{name} resolves to no address")));
                }
                Ok(found)
            }
        }
    }
}

/// `HOST:PORT`, as `--metrics` takes it: `127.0.0.1:9100`, `[::1]:9100`, `localhost:9100`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host part.
    pub host: Host,
    /// The port; 0 picks a free one.
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(text: &str) -> Result<HostPort, String> {
        if let Ok(at) = text.parse::<SocketAddr>() {
            return Ok(HostPort {
                host: Host::Ip(at.ip()),
                port: at.port(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "`{text}` has no port (HOST:PORT, e.g. 127.0.0.1:9100)"
            ));
        };
        if host.contains(':') && !host.starts_with('[') {
            return Err(format!(
                "`{text}`: write an IPv6 address in brackets, e.g. [::1]:9100"
            ));
        }
        let port = port
            .parse()
            .map_err(|_| format!("`{port}` is not a port number (0 to 65535)"))?;
        Ok(HostPort {
            host: host.parse()?,
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Binds one listener per shard on `host` (every address when `None`), port `port`.
///
/// Without a host, listens on every IPv6 and IPv4 address, or on every IPv4 address where
/// the system has no IPv6. A host name binds the first of its addresses that binds, and
/// says so.
pub fn bind_shards(
    host: Option<&Host>,
    port: u16,
    shards: usize,
    backlog: i32,
) -> Result<(SocketAddr, Vec<OwnedFd>), Error> {
    let bind = |at| patiently(at, || sys::bind_listeners(at, shards, backlog));
    let Some(host) = host else {
        return bind_wildcard(port, bind);
    };
    bind_first(host, port, "clients", "binding", bind)
}

/// How long a bind that finds its port in use keeps trying.
///
/// Why try again at all? A server restarted at once may find the port still held for a
/// moment by the process it replaces, if that process did not stop listening before it
/// exited (tailsrv does; older versions did not). Why so short? A port that is really in
/// use, by a second server say, must still fail promptly.
pub const IN_USE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs `bind`, and while it fails with "address in use", runs it again every few
/// milliseconds for up to [`IN_USE_PATIENCE`]; logs when it took more than one try.
fn patiently<T>(at: SocketAddr, mut bind: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let started = std::time::Instant::now();
    let mut tries = 1u32;
    loop {
        match bind() {
            Err(e)
                if e.raw_os_error() == Some(libc::EADDRINUSE)
                    && started.elapsed() < IN_USE_PATIENCE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
                tries += 1;
            }
            result => {
                // A failure is the caller's one-line error; only a success after waiting
                // needs saying.
                if tries > 1 && result.is_ok() {
                    let waited_ms = started.elapsed().as_secs_f64() * 1000.0;
                    info!(
                        %at, tries, waited_ms,
                        "the port was in use at first (a process that just exited, most likely); bound"
                    );
                }
                return result;
            }
        }
    }
}

/// Binds every address: the IPv6 wildcard, which takes IPv4 clients too, or the IPv4
/// wildcard where the system has no IPv6 (socket or bind says EAFNOSUPPORT or
/// EADDRNOTAVAIL). Any other failure is reported as it is.
fn bind_wildcard<T>(
    port: u16,
    mut bind: impl FnMut(SocketAddr) -> io::Result<T>,
) -> Result<T, Error> {
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    match bind(any) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            bind(v4).map_err(|e| bind_error("binding", v4, e))
        }
        result => result.map_err(|e| bind_error("binding", any, e)),
    }
}

/// Binds the `--metrics` listener.
pub fn bind_metrics(at: &HostPort) -> Result<TcpListener, Error> {
    let (_, listener) = bind_first(&at.host, at.port, "metrics", "binding metrics on", |addr| {
        let listener = patiently(addr, || TcpListener::bind(addr))?;
        Ok((listener.local_addr()?, listener))
    })?;
    Ok(listener)
}

/// Resolves `host` and binds the first of its addresses that binds; with none, fails with
/// the first address's error. Logs what a name resolved to and what was bound.
fn bind_first<T>(
    host: &Host,
    port: u16,
    purpose: &str,
    what: &str,
    mut bind: impl FnMut(SocketAddr) -> io::Result<(SocketAddr, T)>,
) -> Result<(SocketAddr, T), Error> {
    let candidates = host.resolve(port)?;
    let mut first_error = None;
    for &at in &candidates {
        match bind(at) {
            Ok((bound, value)) => {
                if let Host::Name(name) = host {
                    let resolved: Vec<String> =
                        candidates.iter().map(|a| a.ip().to_string()).collect();
                    info!(
                        host = %name, resolved = %resolved.join(","), bound = %bound, purpose,
                        "host name resolved; bound the first of its addresses that binds"
                    );
                }
                return Ok((bound, value));
            }
            Err(e) => {
                first_error.get_or_insert((at, e));
            }
        }
    }
    let (at, e) = first_error.expect("resolve returns at least one address");
    let err = bind_error(what, at, e);
    Err(match host {
        Host::Name(name) if candidates.len() > 1 => Error::Config(format!(
            "{err} ({name} resolves to {} addresses; none would bind)",
            candidates.len()
        )),
        _ => err,
    })
}

/// The error for a failed bind, naming the cause where the system's own words do not: a
/// privileged port refused to an unprivileged user.
pub fn bind_error(what: &str, at: SocketAddr, e: io::Error) -> Error {
    explain_bind_error(what, at, e, unprivileged_port_start())
}

fn explain_bind_error(what: &str, at: SocketAddr, e: io::Error, unprivileged_start: u16) -> Error {
    if e.raw_os_error() == Some(libc::EACCES) && at.port() < unprivileged_start {
        return Error::Config(format!(
            "{what} {at}: permission denied: port {} is a privileged port (below \
             {unprivileged_start}); run tailsrv with CAP_NET_BIND_SERVICE \
             (AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit) or use a port of \
             {unprivileged_start} or above",
            at.port(),
        ));
    }
    Error::io(format!("{what} {at}"), e)
}

/// The lowest port an unprivileged process may bind (net.ipv4.ip_unprivileged_port_start,
/// which covers IPv6 too); 1024 where it cannot be read.
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// A client's address for logs: IPv4 clients of a dual-stack listener shown as IPv4.
#[derive(Clone, Copy)]
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => SocketAddr::new(addr.ip().to_canonical(), addr.port()).fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wildcard_falls_back_to_ipv4_only_where_ipv6_is_missing() {
        // The system's answers are faked: no IPv6 cannot be arranged for a real test.
        for errno in [libc::EAFNOSUPPORT, libc::EADDRNOTAVAIL] {
            let mut tried = Vec::new();
            let bound = bind_wildcard(4000, |at| {
                tried.push(at);
                if at.is_ipv6() {
                    Err(io::Error::from_raw_os_error(errno))
                } else {
                    Ok(at)
                }
            })
            .unwrap();
            assert_eq!(bound, "0.0.0.0:4000".parse().unwrap());
            assert_eq!(tried, ["[::]:4000".parse().unwrap(), bound]);
        }
        // With IPv6 there, the IPv6 wildcard is bound and IPv4 is not tried.
        let mut tried = Vec::new();
        let bound = bind_wildcard(0, |at| {
            tried.push(at);
            Ok(at)
        })
        .unwrap();
        assert_eq!(bound, "[::]:0".parse().unwrap());
        assert_eq!(tried.len(), 1);
        // Any other failure (the port is taken) is an error, not a reason to try IPv4.
        let mut tried = 0;
        let err = bind_wildcard(4000, |_| -> io::Result<()> {
            tried += 1;
            Err(io::Error::from_raw_os_error(libc::EADDRINUSE))
        })
        .unwrap_err();
        assert_eq!(tried, 1);
        assert!(err.to_string().contains("[::]:4000"), "{err}");
    }

    #[test]
    fn hosts_parse_as_ip_literals_or_names() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        for (text, want) in [
            ("127.0.0.1", ip("127.0.0.1")),
            ("::1", ip("::1")),
            ("[::1]", ip("::1")),
            ("::", ip("::")),
            ("localhost", Host::Name("localhost".into())),
            ("db-1.example.org", Host::Name("db-1.example.org".into())),
        ] {
            assert_eq!(text.parse::<Host>(), Ok(want), "{text}");
        }
        for bad in ["", "a b", "[::1", "ex/ample", "1.2.3.4:80", "[localhost]"] {
            assert!(bad.parse::<Host>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_ports_parse_with_brackets_for_ipv6() {
        let hp = |host: Host, port| HostPort { host, port };
        for (text, want) in [
            (
                "127.0.0.1:9100",
                hp(Host::Ip("127.0.0.1".parse().unwrap()), 9100),
            ),
            ("[::1]:9100", hp(Host::Ip("::1".parse().unwrap()), 9100)),
            ("[::]:0", hp(Host::Ip("::".parse().unwrap()), 0)),
            ("localhost:9100", hp(Host::Name("localhost".into()), 9100)),
        ] {
            assert_eq!(text.parse::<HostPort>(), Ok(want.clone()), "{text}");
            assert_eq!(want.to_string(), text);
        }
        for bad in [
            "localhost",
            "::1:9100",
            "localhost:99999",
            "localhost:x",
            ":9100",
            "[::1]",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ip_literals_resolve_to_themselves_and_localhost_to_loopback() {
        let ip: Host = "::1".parse().unwrap();
        assert_eq!(ip.resolve(7).unwrap(), vec!["[::1]:7".parse().unwrap()]);
        let name: Host = "localhost".parse().unwrap();
        let found = name.resolve(7).unwrap();
        assert!(!found.is_empty());
        assert!(
            found.iter().all(|a| a.ip().is_loopback() && a.port() == 7),
            "{found:?}"
        );
    }

    #[test]
    fn a_refused_privileged_port_names_the_cause() {
        let at: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let eacces = || io::Error::from_raw_os_error(libc::EACCES);
        let e = explain_bind_error("binding", at, eacces(), 1024);
        let text = e.to_string();
        assert!(
            text.starts_with("binding 0.0.0.0:80: permission denied"),
            "{text}"
        );
        assert!(text.contains("CAP_NET_BIND_SERVICE"), "{text}");
        // Above the threshold EACCES has another cause (an LSM, say): no guess.
        let high: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let e = explain_bind_error("binding", high, eacces(), 1024);
        assert!(!e.to_string().contains("privileged"), "{e}");
        let e = explain_bind_error(
            "binding",
            at,
            io::Error::from_raw_os_error(libc::EADDRINUSE),
            1024,
        );
        assert!(!e.to_string().contains("privileged"), "{e}");
    }
}
