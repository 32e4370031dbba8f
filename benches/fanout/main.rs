//! fanout: the tailsrv benchmark harness. Thousands of clients against tailsrv and against a
//! single-thread reference server, side by side, in one run.
//!
//! ```text
//!   cargo bench --bench fanout -- [SCENARIO...] [OPTIONS]
//!   cargo bench --bench fanout -- --smoke          # seconds; checks data, times nothing
//!   cargo bench --bench fanout -- live --addr 127.0.0.1:7000 --file /var/log/app.log
//! ```
//!
//! - [`engine`]: the client engine, epoll on a few threads, every byte checked.
//! - [`reference`]: the reference server (this executable with `--serve-reference`).
//! - [`server`]: starts a target on a file and reads its CPU, RSS, descriptors from /proc.
//! - [`scenarios`]: catch-up, live, idle, stalled, churn, shards, soak, relay.
//! - [`data`]: file content, live records, the mapped view clients compare against.
//! - [`report`]: medians and spreads, Markdown tables, CSV.
//!
//! The method and the results are in docs/benchmarks.md.

mod data;
mod engine;
mod reference;
mod report;
mod scenarios;
mod server;
mod sys;

use clap::{Parser, ValueEnum};
use scenarios::{Bench, Settings};
use server::Target;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Benchmark tailsrv with thousands of clients, beside a single-thread reference server.
#[derive(Parser, Debug)]
#[command(name = "fanout")]
struct Options {
    /// Scenarios to run [default: all]
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,

    /// A few clients, a few MiB, a few seconds, against both servers: checks every byte and
    /// every record, exits non-zero on any failure, asserts no timing
    #[arg(long)]
    smoke: bool,

    /// Drive a server that is already running at HOST:PORT instead of this tree's binary
    #[arg(long, value_name = "HOST:PORT", requires = "file")]
    addr: Option<SocketAddr>,

    /// The file the --addr server serves; the harness appends to it
    #[arg(long, value_name = "PATH", requires = "addr")]
    file: Option<PathBuf>,

    /// The --addr server's process id, for its CPU, memory and descriptor figures
    #[arg(long, value_name = "PID", requires = "addr")]
    pid: Option<u32>,

    /// Passed to tailsrv as --shards [default: tailsrv's own, one per CPU]
    #[arg(long, value_name = "N")]
    shards: Option<u16>,

    /// Also measure this tailsrv binary (e.g. the previous commit's), as target `baseline`,
    /// for a before and after in one run
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,

    /// Also measure this tree's tailsrv with extra options, as target NAME (repeatable; e.g.
    /// `--variant "linger-0=--linger 0"`)
    #[arg(long, value_name = "NAME=ARGS", value_parser = parse_variant)]
    variant: Vec<(String, Vec<String>)>,

    /// Relay catch-up: also copy with this tailsrv-fetch binary (e.g. the previous commit's),
    /// as fetcher `baseline`, for a before and after in one run
    #[arg(long, value_name = "PATH")]
    baseline_fetch_bin: Option<PathBuf>,

    /// Pinned mode: confine every server to these CPUs (a `taskset -c` list, e.g. `0`)
    #[arg(long, value_name = "LIST", requires = "client_cpus")]
    server_cpus: Option<String>,

    /// Pinned mode: confine the clients and the writer (this process) to these CPUs
    /// (e.g. `1`)
    #[arg(long, value_name = "LIST", requires = "server_cpus", value_parser = parse_cpus)]
    client_cpus: Option<CpuList>,

    /// Append cost: the points to measure, as APPENDS_PER_SEC:CLIENTS pairs
    /// [default: 100:0,1000:0,1000:1,1000:100,10000:10]
    #[arg(long, value_delimiter = ',', value_name = "RATE:N,...", value_parser = parse_append_point)]
    append_points: Option<Vec<(f64, usize)>>,

    /// Append cost: seconds of appends per run [default: 10]
    #[arg(long, value_name = "SECS")]
    append_secs: Option<f64>,

    /// Do not measure the reference server
    #[arg(long)]
    no_reference: bool,

    /// Also measure this tree's tailsrv with HTTP clients (`GET /stream`), as target
    /// `tailsrv-http`, in the live and catch-up scenarios (always on with --smoke)
    #[arg(long, conflicts_with = "addr")]
    http: bool,

    /// The tailsrv binary [default: this tree's release build]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Client counts, replacing each selected scenario's own list
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    clients: Option<Vec<usize>>,

    /// Runs per point and target [default: 5 for catch-up, 3 for the others]
    #[arg(long, value_name = "N")]
    reps: Option<usize>,

    /// Catch-up throughput mode: clients drop data in the kernel (MSG_TRUNC) unchecked,
    /// taking the generator's own copy out of the measurement
    #[arg(long)]
    discard: bool,

    /// Client engine threads
    #[arg(long, default_value_t = 2, value_name = "N")]
    threads: usize,

    /// Catch-up: bytes read per run over all clients (each client reads TOTAL / N, at least
    /// --min-size) [default: 2 GiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    total: Option<u64>,

    /// Catch-up: the least each client reads [default: 2 MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    min_size: Option<u64>,

    /// Live: records appended per second
    #[arg(long, value_name = "N")]
    rate: Option<f64>,

    /// Live: seconds of timed appends per run
    #[arg(long, value_name = "SECS")]
    secs: Option<f64>,

    /// Idle: seconds measured per run
    #[arg(long, value_name = "SECS")]
    idle_secs: Option<f64>,

    /// Stalled: the stalled client counts to compare (live clients: --clients)
    #[arg(long, value_delimiter = ',', value_name = "N,N")]
    stalled: Option<Vec<usize>>,

    /// Churn: seconds per round (two rounds per run)
    #[arg(long, value_name = "SECS")]
    churn_secs: Option<f64>,

    /// Churn: clients connecting and disconnecting at once
    #[arg(long, value_name = "N")]
    churn_clients: Option<usize>,

    /// Soak: seconds of random clients [default: 60, or 20 with --smoke]
    #[arg(long, value_name = "SECS")]
    soak_secs: Option<f64>,

    /// Soak: client slots, each reconnecting as soon as its client leaves [default: 200]
    #[arg(long, value_name = "N")]
    soak_slots: Option<usize>,

    /// Where the CSV and Markdown results go [default: benches/results, or
    /// target/fanout-smoke with --smoke]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Run nothing: rebuild the tables and summaries from the runs CSV in --out
    #[arg(long)]
    tables: bool,

    /// Internal: run the reference server on FILE
    #[arg(long, hide = true, value_name = "FILE")]
    serve_reference: Option<PathBuf>,

    /// Internal: the reference server's address
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    reference_addr: SocketAddr,

    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Appendcost,
    Catchup,
    Live,
    Idle,
    Stalled,
    Churn,
    Shards,
    Soak,
    Relay,
}

/// `NAME=ARGS`: a target name and the options it adds, split at white space.
fn parse_variant(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, args) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=ARGS"))?;
    if name.is_empty() || ["reference", "tailsrv", "baseline"].contains(&name) {
        return Err(format!("`{name}` cannot name a variant"));
    }
    Ok((
        name.to_string(),
        args.split_whitespace().map(String::from).collect(),
    ))
}

/// CPUs by number.
#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

/// A CPU list as `taskset -c` takes it: `0`, `0,2`, `1-3`.
fn parse_cpus(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let bad = || format!("`{text}` is not a CPU list (e.g. 0 or 1-3)");
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    Ok(CpuList(cpus))
}

/// An append-cost point: `RATE:CLIENTS`.
fn parse_append_point(text: &str) -> Result<(f64, usize), String> {
    let bad = || format!("`{text}` is not APPENDS_PER_SEC:CLIENTS (e.g. 1000:100)");
    let (rate, clients) = text.split_once(':').ok_or_else(bad)?;
    let rate: f64 = rate.trim().parse().map_err(|_| bad())?;
    let clients: usize = clients.trim().parse().map_err(|_| bad())?;
    if !rate.is_finite() || rate <= 0.0 {
        return Err(bad());
    }
    Ok((rate, clients))
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kib" => 1 << 10,
                "m" | "mib" => 1 << 20,
                "g" | "gib" => 1 << 30,
                other => return Err(format!("unknown unit `{other}` (K, M, G)")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size"))?;
    Ok((n * mult as f64) as u64)
}

fn main() -> ExitCode {
    let opts = Options::parse();
    if let Some(file) = &opts.serve_reference {
        return match reference::serve(file, opts.reference_addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fanout-reference: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fanout: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the selected scenarios. `Ok(false)` when any run failed its checks.
fn run(opts: Options) -> Result<bool, String> {
    // Room for 10,000 clients, the server's ends of them (its own process, but it inherits
    // this limit) and a margin. Root may raise the hard limit; others get the hard limit.
    let nofile = sys::raise_nofile(1 << 16).map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let mut settings = if opts.smoke {
        Settings::smoke()
    } else {
        Settings::full()
    };
    settings.threads = opts.threads.max(1);
    settings.verify = !opts.discard;
    settings.nofile = nofile;
    if let Some(r) = opts.reps {
        settings.set_reps(r.max(1));
    }
    if let Some(c) = &opts.clients {
        settings.set_clients(c);
    }
    if let Some(v) = opts.total {
        settings.total = v;
    }
    if let Some(v) = opts.min_size {
        settings.min_size = v;
    }
    if let Some(v) = opts.rate {
        settings.rate = v;
    }
    if let Some(v) = opts.secs {
        settings.live_secs = v;
    }
    if let Some(v) = opts.idle_secs {
        settings.idle_secs = v;
    }
    if let Some(v) = &opts.stalled {
        settings.stalled = v.clone();
    }
    if let Some(v) = opts.churn_secs {
        settings.churn_secs = v;
    }
    if let Some(v) = opts.churn_clients {
        settings.churn_clients = v;
    }
    if let Some(v) = opts.soak_secs {
        settings.soak_secs = v;
    }
    if let Some(v) = opts.soak_slots {
        settings.soak_slots = v.max(1);
    }
    if let Some(v) = &opts.append_points {
        settings.appendcost = v.clone();
    }
    if let Some(v) = opts.append_secs {
        settings.appendcost_secs = v;
    }
    settings.baseline_fetch_bin = opts.baseline_fetch_bin.clone();
    if let (Some(server), Some(CpuList(clients))) = (&opts.server_cpus, &opts.client_cpus) {
        // Threads started from here on (client engine, appender) inherit the mask.
        sys::set_affinity(clients).map_err(|e| format!("pinning to CPUs {clients:?}: {e}"))?;
        let _ = server::SERVER_CPUS.set(server.clone());
    }

    let bin = opts
        .server_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tailsrv")));
    let main_target = match (&opts.addr, &opts.file) {
        (Some(addr), Some(file)) => Target::External {
            addr: *addr,
            file: file.clone(),
            pid: opts.pid,
        },
        _ => Target::Tailsrv {
            bin: bin.clone(),
            shards: opts.shards,
        },
    };
    let mut targets = Vec::new();
    if !opts.no_reference {
        targets.push(Target::Reference);
    }
    targets.push(main_target);
    // The smoke run checks the HTTP clients' bytes too, so that path cannot rot either.
    if opts.http || (opts.smoke && opts.addr.is_none()) {
        targets.push(Target::TailsrvHttp {
            bin: bin.clone(),
            shards: opts.shards,
        });
    }
    if let Some(bin) = &opts.baseline_bin {
        targets.push(Target::Baseline {
            bin: bin.clone(),
            shards: opts.shards,
        });
    }
    for (name, args) in &opts.variant {
        targets.push(Target::Variant {
            name: name.clone(),
            bin: bin.clone(),
            shards: opts.shards,
            args: args.clone(),
        });
    }
    // The shards scenario compares tailsrv with one and with two shards.
    let shard_targets = if matches!(targets.last(), Some(Target::External { .. })) {
        targets.clone()
    } else {
        let mut t: Vec<Target> = targets
            .iter()
            .filter(|t| t.is_reference())
            .cloned()
            .collect();
        t.push(Target::Tailsrv {
            bin: bin.clone(),
            shards: Some(1),
        });
        t.push(Target::Tailsrv {
            bin,
            shards: Some(2),
        });
        t
    };

    let out = opts.out.clone().unwrap_or_else(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        if opts.smoke {
            root.join("target/fanout-smoke")
        } else {
            root.join("benches/results")
        }
    });
    let scenarios = if opts.scenarios.is_empty() {
        if opts.smoke {
            vec![
                Scenario::Appendcost,
                Scenario::Catchup,
                Scenario::Live,
                Scenario::Idle,
                Scenario::Stalled,
                Scenario::Churn,
                Scenario::Soak,
                Scenario::Relay,
            ]
        } else {
            Scenario::value_variants().to_vec()
        }
    } else {
        opts.scenarios.clone()
    };
    let mut bench = Bench::new(settings, targets, shard_targets, out)?;
    if opts.tables {
        return bench.tables_only();
    }
    bench.machine_note();
    let mut ok = true;
    for s in scenarios {
        ok &= bench.run(s)?;
    }
    Ok(ok)
}
