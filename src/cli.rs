//! Command-line options. Their doc comments are the `--help` text.

use crate::addr::{Host, HostPort};
use crate::cidr::Cidr;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Stream a growing file to many TCP clients: `tail -f` as a server.
///
/// A client connects and sends a header line: `N` (or `+N`) starts at byte N, `-N` sends the
/// last N bytes, `nN` the last N lines, `-0` only what is appended from now on. tailsrv then
/// sends the file from there and keeps sending as it grows. Try: `echo n10 | nc HOST PORT`.
/// The same port speaks HTTP: `curl -N http://HOST:PORT/stream` (see --no-http).
#[derive(Parser, Debug, Clone)]
#[command(
    version,
    after_help = "Rotation: tailsrv follows FILE's name; the port stays open (--on-rotation).

Exit status: 0 after SIGINT, SIGTERM or SIGHUP; 1 on a fatal error; 2 on a bad command line; 3 \
when FILE's directory is removed; with --on-rotation exit, 3 when FILE is deleted, renamed away \
or replaced and 4 when it shrinks (truncation)."
)]
pub struct Options {
    /// TCP port to listen on; 0 picks a free one (the startup log line says which)
    #[arg(short, long)]
    pub port: u16,

    /// Address or host name to listen on [default: every interface, IPv6 and IPv4]
    ///
    /// A host name is resolved once, at start-up; tailsrv listens on the first of its
    /// addresses that binds, and logs which.
    #[arg(short, long, value_name = "ADDR")]
    pub bind: Option<Host>,

    /// Shard executors, each on its own thread with its own share of the clients
    /// [default: the number of CPUs tailsrv may run on]. Shards are pinned one per CPU
    /// when they fit; with more shards than CPUs they share the CPUs tailsrv may run on.
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,

    /// Seconds a client has to send its header line before it is disconnected
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub header_timeout: Duration,

    /// Coalesce deliveries under load: growth that comes within the window after the last
    /// delivery to the readers waits for the window's end, and goes out with whatever else
    /// was appended meanwhile. The window starts at a quarter of DURATION and doubles while
    /// the file stays busy, up to DURATION (e.g. 2ms, 10ms; 0 sends every append at once;
    /// at most 1s)
    ///
    /// The cost is latency under load only: while appends keep coming, a reader gets each
    /// up to DURATION later than it would have. Appends further apart than a quarter of
    /// DURATION are sent at once. What it saves, and how the default was chosen:
    /// docs/operations.md.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_LINGER,
          value_parser = crate::linger::parse_window)]
    pub linger: Duration,

    /// Most clients connected at once, over all shards; more are closed at once, before any
    /// data [default: the descriptor limit less a reserve for tailsrv's own; the start-up log
    /// says what it is]
    ///
    /// The reserve is 64 descriptors plus 8 per shard (at most half the limit), so that in
    /// normal operation accept never runs out of descriptors. A value above what the
    /// descriptor limit allows is accepted with a warning.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_clients: Option<u32>,

    /// Most clients connected at once from one peer: one IPv4 address, or one IPv6 prefix
    /// (--ipv6-prefix); 0 for no per-peer limit
    ///
    /// Set it when many untrusted peers share the server and one of them must not take
    /// every slot of --max-clients. It is off by default because fan-out from one host is
    /// normal: a relay with many consumers, a load test, everyone behind one NAT or proxy.
    /// --max-clients is what protects the descriptors. Connections over it are closed at
    /// once, before any data. A client that vanished without a word holds its slot until
    /// TCP finds it gone: docs/operations.md says how long.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_clients_per_ip: u32,

    /// Length of the IPv6 prefix that counts as one peer for --max-clients-per-ip
    #[arg(long, value_name = "BITS", default_value_t = crate::admission::DEFAULT_IPV6_PREFIX,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix: u8,

    /// Only peers in this range may connect (repeatable; e.g. 10.0.0.0/8, ::1, 2001:db8::/32);
    /// others are closed before their header is read [default: everyone]
    ///
    /// IPv4 ranges also cover IPv4 peers of a dual-stack listener (::ffff:a.b.c.d). This is
    /// not authentication: see docs/operations.md.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub allow: Vec<Cidr>,

    /// Serve the raw protocol only: no HTTP on the port (by default a connection whose first
    /// line is an HTTP request, e.g. `curl -N http://HOST:PORT/stream`, is answered in HTTP)
    #[arg(long)]
    pub no_http: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100, [::1]:9100 or
    /// localhost:9100)
    ///
    /// A host name is resolved once, at start-up, and the first of its addresses that binds
    /// is used. Port 0 picks a free port; the log line "serving metrics at" gives it.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<HostPort>,

    /// What to do when FILE is rotated (renamed away, deleted or replaced) or truncated
    ///
    /// `follow`: keep serving. Clients of the old file get every byte it held (for up to
    /// 2 s), then an orderly end; clients of a truncated file are reset; everyone who
    /// connects from then on gets the file now at FILE's name (waiting for it to appear, if
    /// need be). `exit`: drain the clients and exit 3 (renamed, deleted, replaced), or reset
    /// them and exit 4 (truncated), for a supervisor to decide what comes next.
    #[arg(long, value_name = "WHAT", value_enum, default_value_t = OnRotation::Follow)]
    pub on_rotation: OnRotation,

    /// Send logs to the systemd journal, with structured fields, instead of stderr
    #[cfg(feature = "tracing-journald")]
    #[arg(long)]
    pub journald: bool,

    /// The file to serve. It need not exist yet, but its directory must.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// The `--linger` default (see docs/operations.md, "Coalescing", for the measurements).
pub const DEFAULT_LINGER: &str = "2ms";

/// What tailsrv does when FILE is rotated or truncated (`--on-rotation`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRotation {
    /// Serve the new file under FILE's name; clients of the old one end.
    Follow,
    /// Stop, with exit status 3 (the file went) or 4 (it shrank).
    Exit,
}

impl Options {
    /// Parses the process's command line, as [`Parser::parse`], and exits with status 2 and
    /// a message on a bad one; a port given without `-p` gets a message that says so.
    pub fn parse_or_exit() -> Options {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        match Options::try_parse_from(&args) {
            Ok(opts) => opts,
            Err(e) => {
                let words: Vec<String> = args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                if e.use_stderr() {
                    if let Some(hint) = missing_port_hint(&words) {
                        use clap::CommandFactory;
                        let kind = clap::error::ErrorKind::MissingRequiredArgument;
                        Options::command().error(kind, hint).exit();
                    }
                }
                e.exit()
            }
        }
    }
}

/// What to say about a command line that has a port but not `-p`, as `tailsrv 4321 app.log`
/// (clap alone would call `app.log` an unexpected argument); `None` for any other.
pub(crate) fn missing_port_hint(args: &[String]) -> Option<String> {
    let words = args.get(1..)?;
    let is_port_flag =
        |w: &String| w == "-p" || w == "--port" || w.starts_with("--port=") || w.starts_with("-p");
    if words.iter().any(is_port_flag) {
        return None;
    }
    let [.., before, number, file] = words else {
        // `tailsrv 4321 app.log` itself: the two words are all there is.
        let [number, file] = words else { return None };
        return hint(number, file);
    };
    // `--shards 2 app.log` is a complete option: its 2 is not a port. Every option but
    // the flags takes a value, unless it is given with `=`.
    let takes_value = before.starts_with('-')
        && !before.contains('=')
        && !matches!(
            before.as_str(),
            "--journald" | "-h" | "--help" | "-V" | "--version"
        );
    if takes_value {
        return None;
    }
    hint(number, file)
}

fn hint(number: &str, file: &str) -> Option<String> {
    number.parse::<u16>().ok()?;
    if file.starts_with('-') {
        return None;
    }
    Some(format!(
        "the port is missing: it is given with -p (did you mean `tailsrv -p {number} {file}`?)"
    ))
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "`{text}`: the header timeout must be more than 0 and at most 86400 seconds (a day)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn options_are_consistent() {
        Options::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let o = Options::try_parse_from(["tailsrv", "-p", "4321", "log"]).unwrap();
        assert_eq!((o.port, o.bind, o.shards), (4321, None, None));
        assert_eq!(o.on_rotation, OnRotation::Follow);
        let o = Options::try_parse_from(["tailsrv", "-p", "1", "--on-rotation", "exit", "log"])
            .unwrap();
        assert_eq!(o.on_rotation, OnRotation::Exit);
        assert_eq!(o.header_timeout, Duration::from_secs(10));
        assert_eq!(
            o.linger,
            crate::linger::parse_window(DEFAULT_LINGER).unwrap()
        );
        let o = Options::try_parse_from(["tailsrv", "-p", "1", "--linger", "0", "log"]).unwrap();
        assert_eq!(o.linger, Duration::ZERO);
        let o = Options::try_parse_from([
            "tailsrv",
            "-p",
            "0",
            "--bind",
            "::1",
            "--shards",
            "3",
            "--header-timeout",
            "0.5",
            "log",
        ])
        .unwrap();
        assert_eq!(o.bind, Some("::1".parse().unwrap()));
        assert_eq!(o.shards, Some(3));
        assert_eq!(o.header_timeout, Duration::from_millis(500));
        assert_eq!(
            (o.max_clients, o.max_clients_per_ip, o.ipv6_prefix),
            (None, 0, 64)
        );
        assert!(o.allow.is_empty());
        let o = Options::try_parse_from([
            "tailsrv",
            "-p",
            "1",
            "--max-clients",
            "500",
            "--max-clients-per-ip",
            "8",
            "--ipv6-prefix",
            "56",
            "--allow",
            "10.0.0.0/8,::1",
            "--allow",
            "192.0.2.7",
            "log",
        ])
        .unwrap();
        assert_eq!(
            (o.max_clients, o.max_clients_per_ip, o.ipv6_prefix),
            (Some(500), 8, 56)
        );
        let allow: Vec<String> = o.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
        let o = Options::try_parse_from([
            "tailsrv",
            "-p",
            "0",
            "-b",
            "localhost",
            "--metrics",
            "localhost:9100",
            "log",
        ])
        .unwrap();
        assert_eq!(o.bind, Some(Host::Name("localhost".into())));
        assert_eq!(
            o.metrics.map(|m| m.to_string()).as_deref(),
            Some("localhost:9100")
        );
        let o = Options::try_parse_from(["tailsrv", "-p", "0", "--metrics", "[::1]:9100", "log"])
            .unwrap();
        assert_eq!(
            o.metrics.map(|m| m.to_string()).as_deref(),
            Some("[::1]:9100")
        );
    }

    #[test]
    fn a_zero_header_timeout_says_what_is_allowed() {
        let e = parse_seconds("0").unwrap_err();
        assert_eq!(
            e,
            "`0`: the header timeout must be more than 0 and at most 86400 seconds (a day)"
        );
        assert!(parse_seconds("86400").is_ok() && parse_seconds("86401").is_err());
        assert_eq!(
            parse_seconds("x").unwrap_err(),
            "`x` is not a number of seconds"
        );
    }

    #[test]
    fn refuses_bad_values() {
        for args in [
            &["tailsrv", "log"][..],
            &["tailsrv", "-p", "70000", "log"],
            &["tailsrv", "-p", "1", "--shards", "0", "log"],
            &["tailsrv", "-p", "1", "--bind", "not an ip", "log"],
            &["tailsrv", "-p", "1", "--metrics", "::1:9100", "log"],
            &["tailsrv", "-p", "1", "--metrics", "localhost", "log"],
            &["tailsrv", "-p", "1", "--header-timeout", "0", "log"],
            &["tailsrv", "-p", "1", "--linger", "5", "log"],
            &["tailsrv", "-p", "1", "--linger", "2s", "log"],
            &["tailsrv", "-p", "1"],
            &["tailsrv", "-p", "1", "--max-clients", "0", "log"],
            &["tailsrv", "-p", "1", "--max-clients-per-ip", "-1", "log"],
            &["tailsrv", "-p", "1", "--ipv6-prefix", "129", "log"],
            &["tailsrv", "-p", "1", "--allow", "10.1.2.3/8", "log"],
            &["tailsrv", "-p", "1", "--allow", "localhost", "log"],
            &["tailsrv", "-p", "1", "--on-rotation", "restart", "log"],
        ] {
            assert!(Options::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn a_port_without_p_is_named_as_missing() {
        let hint = |line: &str| {
            let words: Vec<String> = line.split(' ').map(String::from).collect();
            missing_port_hint(&words)
        };
        let said =
            "the port is missing: it is given with -p (did you mean `tailsrv -p 4321 app.log`?)";
        for line in [
            "tailsrv 4321 app.log",
            "tailsrv --shards 2 4321 app.log",
            "tailsrv --journald 4321 app.log",
            "tailsrv --max-clients=9 4321 app.log",
        ] {
            assert_eq!(hint(line).as_deref(), Some(said), "{line}");
        }
        for line in [
            "tailsrv",
            "tailsrv app.log",
            "tailsrv -p 4321 app.log",
            "tailsrv -p4321 app.log",
            "tailsrv --port=4321 app.log",
            "tailsrv --shards 2 app.log",
            "tailsrv 70000 app.log",
            "tailsrv four app.log",
            "tailsrv 4321 --journald",
        ] {
            assert_eq!(hint(line), None, "{line}");
        }
    }

    #[test]
    fn parse_seconds_takes_positive_seconds_up_to_a_day() {
        for (text, want) in [
            ("10", Some(Duration::from_secs(10))),
            ("0.5", Some(Duration::from_millis(500))),
            ("86400", Some(Duration::from_secs(86_400))),
            ("0", None),
            ("-3", None),
            ("-0.5", None),
            ("86400.5", None),
            ("inf", None),
            ("NaN", None),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(parse_seconds(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn a_negative_header_timeout_reaches_its_parser() {
        // Why `=`? With a space, clap may take `-3` for an unknown short option and refuse it
        // before parse_seconds runs, which would pass this test for the wrong reason.
        let err = Options::try_parse_from(["tailsrv", "-p", "1", "--header-timeout=-3", "log"])
            .expect_err("a negative timeout must be refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
    }
}
