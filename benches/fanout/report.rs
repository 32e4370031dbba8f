//! Results: one [`Sample`] per run, its figures a typed struct declared with [`figures!`],
//! summarised per point as median and spread, printed as Markdown tables and written as CSV.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// What a scenario's figures struct offers the report: its columns, in CSV order, and a way
/// back from them. [`figures!`] writes both from one list of field names.
pub trait Figures: Default {
    /// `(column, value)` for every figure this run has, in CSV order.
    fn columns(&self) -> Vec<(&'static str, f64)>;
    /// Sets the figure named `column`; false when there is none by that name.
    fn set(&mut self, column: &str, value: f64) -> bool;
    /// The figure named `column`, for code that only knows the name (the CSV summary).
    fn get(&self, column: &str) -> Option<f64> {
        self.columns()
            .into_iter()
            .find(|(c, _)| *c == column)
            .map(|(_, v)| v)
    }
}

/// Declares a scenario's figures: a struct of `Option<f64>` fields (absent when a run could
/// not measure it, such as an external server's CPU without `--pid`) whose names are the
/// CSV columns, in the order given.
macro_rules! figures {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: Option<f64>,)*
        }

        impl $crate::report::Figures for $name {
            fn columns(&self) -> Vec<(&'static str, f64)> {
                let mut out = Vec::new();
                $(if let Some(v) = self.$field {
                    out.push((stringify!($field), v));
                })*
                out
            }

            fn set(&mut self, column: &str, value: f64) -> bool {
                match column {
                    $(stringify!($field) => self.$field = Some(value),)*
                    _ => return false,
                }
                true
            }
        }
    };
}
pub(crate) use figures;

/// One run of one scenario point against one target.
#[derive(Debug, Clone)]
pub struct Sample<F> {
    pub target: String,
    pub clients: usize,
    /// What else distinguishes the point (`stalled=100`, `close=fin`), or empty.
    pub variant: String,
    /// `verify` (every byte compared with the file) or `discard` (MSG_TRUNC, counted only).
    pub mode: &'static str,
    pub rep: usize,
    pub figures: F,
    pub failures: Vec<String>,
}

/// Median, minimum and maximum of one metric over the runs of a point.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

pub fn stat(values: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        runs: n,
    })
}

/// Every run of one scenario, in the order they ran.
pub struct Results<F> {
    pub samples: Vec<Sample<F>>,
}

impl<F> Default for Results<F> {
    fn default() -> Self {
        Results {
            samples: Vec::new(),
        }
    }
}

impl<F: Figures> Results<F> {
    /// The points, in first-run order: (clients, variant).
    pub fn points(&self) -> Vec<(usize, String)> {
        let mut out: Vec<(usize, String)> = Vec::new();
        for s in &self.samples {
            let p = (s.clients, s.variant.clone());
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    pub fn targets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.samples {
            if !out.contains(&s.target) {
                out.push(s.target.clone());
            }
        }
        out
    }

    /// The runs of `target` at one point.
    pub fn runs<'a>(
        &'a self,
        target: &'a str,
        clients: usize,
        variant: &'a str,
    ) -> impl Iterator<Item = &'a Sample<F>> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.target == target && s.clients == clients && s.variant == variant)
    }

    /// One figure over the runs of `target` at one point.
    pub fn stat(
        &self,
        target: &str,
        clients: usize,
        variant: &str,
        figure: impl Fn(&F) -> Option<f64>,
    ) -> Option<Stat> {
        let values: Vec<f64> = self
            .runs(target, clients, variant)
            .filter_map(|s| figure(&s.figures))
            .collect();
        stat(&values)
    }

    /// The median of `target` divided by the reference's median at the same point.
    pub fn ratio(
        &self,
        target: &str,
        clients: usize,
        variant: &str,
        figure: impl Fn(&F) -> Option<f64>,
    ) -> Option<f64> {
        let t = self.stat(target, clients, variant, &figure)?;
        let r = self.stat("reference", clients, variant, &figure)?;
        (r.median != 0.0).then(|| t.median / r.median)
    }

    /// A table's "vs ref" cell: [`times`] the [`ratio`](Self::ratio), empty on the
    /// reference's own row.
    pub fn vs_ref(
        &self,
        target: &str,
        clients: usize,
        variant: &str,
        figure: impl Fn(&F) -> Option<f64>,
    ) -> String {
        if target == "reference" {
            String::new()
        } else {
            times(self.ratio(target, clients, variant, figure))
        }
    }

    /// `failed / runs` at a point, or empty when none failed.
    pub fn failed(&self, target: &str, clients: usize, variant: &str) -> String {
        let runs = self.runs(target, clients, variant).count();
        let bad = self
            .runs(target, clients, variant)
            .filter(|s| !s.failures.is_empty())
            .count();
        if bad == 0 {
            String::new()
        } else {
            format!("{bad} of {runs}")
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.samples
            .iter()
            .flat_map(|s| {
                s.failures.iter().map(move |f| {
                    format!(
                        "{} clients={} {} rep {}: {f}",
                        s.target, s.clients, s.variant, s.rep
                    )
                })
            })
            .collect()
    }

    /// Reads back the runs a previous [`Results::write_csv`] wrote to `NAME.csv`.
    pub fn read_csv(dir: &Path, name: &str) -> io::Result<Results<F>> {
        let text = std::fs::read_to_string(dir.join(format!("{name}.csv")))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{name}.csv: {what}"));
        let mut samples = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != header.len() {
                return Err(bad("a row has the wrong number of cells"));
            }
            let mut s = Sample {
                target: cells[1].to_string(),
                clients: cells[2].parse().map_err(|_| bad("clients"))?,
                variant: cells[3].to_string(),
                mode: if cells[4] == "discard" {
                    "discard"
                } else {
                    "verify"
                },
                rep: cells[5].parse().map_err(|_| bad("rep"))?,
                figures: F::default(),
                failures: Vec::new(),
            };
            for (i, h) in header.iter().enumerate().take(header.len() - 1).skip(7) {
                if let Ok(v) = cells[i].parse::<f64>() {
                    if !s.figures.set(h, v) {
                        return Err(bad(&format!("unknown column `{h}`")));
                    }
                }
            }
            let why = cells[header.len() - 1].trim();
            if !why.is_empty() {
                s.failures = why.split("; ").map(str::to_string).collect();
            } else if cells[6] == "false" {
                s.failures.push("failed".into());
            }
            samples.push(s);
        }
        Ok(Results { samples })
    }

    /// Writes `NAME.csv` (one row per run) and `NAME_summary.csv` (one row per point, target
    /// and metric: median, min, max, runs, and the ratio to the reference's median).
    pub fn write_csv(&self, dir: &Path, name: &str) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut metrics: Vec<&'static str> = Vec::new();
        for s in &self.samples {
            for (m, _) in s.figures.columns() {
                if !metrics.contains(&m) {
                    metrics.push(m);
                }
            }
        }
        let mut runs = String::from("scenario,target,clients,variant,mode,rep,ok");
        for m in &metrics {
            let _ = write!(runs, ",{m}");
        }
        runs.push_str(",failures\n");
        for s in &self.samples {
            let _ = write!(
                runs,
                "{name},{},{},{},{},{},{}",
                s.target,
                s.clients,
                s.variant,
                s.mode,
                s.rep,
                s.failures.is_empty()
            );
            for m in &metrics {
                match s.figures.get(m) {
                    Some(v) => {
                        let _ = write!(runs, ",{}", num(v));
                    }
                    None => runs.push(','),
                }
            }
            let why = s.failures.join("; ").replace([',', '\n', '"'], " ");
            let _ = writeln!(runs, ",{why}");
        }
        std::fs::write(dir.join(format!("{name}.csv")), runs)?;

        let mut summary = String::from(
            "scenario,target,clients,variant,mode,metric,median,min,max,runs,ratio_to_reference\n",
        );
        for (clients, variant) in self.points() {
            for target in self.targets() {
                let mode = self
                    .samples
                    .iter()
                    .find(|s| s.target == target && s.clients == clients && s.variant == variant)
                    .map_or("", |s| s.mode);
                for m in &metrics {
                    let Some(st) = self.stat(&target, clients, &variant, |f| f.get(m)) else {
                        continue;
                    };
                    let ratio = self
                        .ratio(&target, clients, &variant, |f| f.get(m))
                        .map(num)
                        .unwrap_or_default();
                    let _ = writeln!(
                        summary,
                        "{name},{target},{clients},{variant},{mode},{m},{},{},{},{},{ratio}",
                        num(st.median),
                        num(st.min),
                        num(st.max),
                        st.runs
                    );
                }
            }
        }
        std::fs::write(dir.join(format!("{name}_summary.csv")), summary)
    }
}

fn num(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.6}")
    }
}

/// A Markdown table built row by row, its columns padded to line up in a terminal too.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                let _ = write!(s, " {c:<w$} |");
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.headers);
        out.push('|');
        for w in &widths {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// `median [min–max]` with `decimals` places, or `-` without data.
pub fn spread(s: Option<Stat>, decimals: usize) -> String {
    match s {
        Some(s) if s.runs > 1 => format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            s.median,
            s.min,
            s.max,
            d = decimals
        ),
        Some(s) => format!("{:.d$}", s.median, d = decimals),
        None => "-".into(),
    }
}

/// The median alone.
pub fn median(s: Option<Stat>, decimals: usize) -> String {
    s.map_or("-".into(), |s| format!("{:.d$}", s.median, d = decimals))
}

/// `x1.23`, or `-`.
pub fn times(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("×{r:.2}"))
}
