#!/usr/bin/env python3
"""Draws the plots in docs/plots/ from the CSV in benches/results/.

    pip install matplotlib
    python3 benches/plot.py [RESULTS_DIR] [PLOTS_DIR]

Only the write-up needs this; the harness itself and CI do not.
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benches" / "results"
PLOTS = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "plots"

plt.rcParams["svg.hashsalt"] = "fanout"
plt.rcParams["font.size"] = 10
STYLE = {
    "tailsrv": dict(color="#1f77b4", marker="o"),
    "tailsrv-s1": dict(color="#2ca02c", marker="^"),
    "tailsrv-s2": dict(color="#1f77b4", marker="o"),
    "reference": dict(color="#d62728", marker="s"),
    "external": dict(color="#9467bd", marker="D"),
}


def summary(name):
    """{(target, variant): {metric: {clients: (median, min, max)}}}"""
    path = RESULTS / f"{name}_summary.csv"
    out = defaultdict(lambda: defaultdict(dict))
    if not path.exists():
        return out
    with path.open() as f:
        for row in csv.DictReader(f):
            key = (row["target"], row["variant"])
            out[key][row["metric"]][int(row["clients"])] = (
                float(row["median"]),
                float(row["min"]),
                float(row["max"]),
            )
    return out


def runs(name, metric):
    """{target: ([clients], [value])}: every passing run of NAME, for showing the spread."""
    path = RESULTS / f"{name}.csv"
    out = defaultdict(lambda: ([], []))
    if not path.exists():
        return out
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get("ok") != "true" or not row.get(metric):
                continue
            xs, ys = out[row["target"]]
            xs.append(int(row["clients"]))
            ys.append(float(row[metric]))
    return out


def series(data, metric):
    xs = sorted(data[metric])
    med = [data[metric][x][0] for x in xs]
    lo = [data[metric][x][0] - data[metric][x][1] for x in xs]
    hi = [data[metric][x][2] - data[metric][x][0] for x in xs]
    return xs, med, [lo, hi]


def save(fig, name):
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOTS / name, metadata={"Date": None})
    plt.close(fig)
    print(f"wrote {PLOTS / name}")


def latency():
    live = summary("live")
    if not live:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (target, _), data in sorted(live.items()):
        style = STYLE.get(target, {})
        for metric, dash, label in [
            ("p50_ms", ":", "p50"),
            ("p99_ms", "-", "p99"),
            ("p999_ms", "--", "p99.9"),
        ]:
            if metric not in data:
                continue
            xs, med, err = series(data, metric)
            ax.errorbar(
                xs, med, yerr=err, linestyle=dash, capsize=3, label=f"{target} {label}", **style
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connected clients")
    ax.set_ylabel("append-to-delivery latency, ms")
    ax.set_title("live: latency percentiles (median of runs, bars: min–max)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save(fig, "live_latency.svg")


def throughput():
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drew = False
    for name, dash, mode in [("catchup", "-", "verify"), ("catchup_discard", "--", "discard")]:
        for (target, _), data in sorted(summary(name).items()):
            if "gib_s" not in data:
                continue
            xs, med, err = series(data, "gib_s")
            ax.errorbar(
                xs,
                med,
                yerr=err,
                linestyle=dash,
                capsize=3,
                label=f"{target} ({mode})",
                **STYLE.get(target, {}),
            )
            drew = True
        # Single runs as dots: a point whose runs fall into two groups shows as two clusters,
        # which the median and its min-max bar would hide.
        for target, (xs, ys) in sorted(runs(name, "gib_s").items()):
            # Beside their median, not on it: verify runs a little left, discard runs right.
            shift = 0.85 if mode == "verify" else 1.15
            color = STYLE.get(target, {}).get("color")
            ax.scatter([x * shift for x in xs], ys, s=12, color=color, alpha=0.45, zorder=3,
                       marker="o" if mode == "verify" else "x")
    if not drew:
        plt.close(fig)
        return
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("clients reading from offset 0")
    ax.set_ylabel("aggregate GiB/s")
    ax.set_title("catch-up: aggregate throughput (median, min–max; dots: runs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "catchup_throughput.svg")


def shards():
    cat = summary("shards_catchup")
    live = summary("shards_live")
    if not cat and not live:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, data, metric, ylabel, title in [
        (axes[0], cat, "gib_s", "aggregate GiB/s", "catch-up throughput"),
        (axes[1], live, "p99_ms", "p99 latency, ms", "live p99 latency"),
    ]:
        targets = [t for t in ["reference", "tailsrv-s1", "tailsrv-s2"] if (t, "") in data]
        clients = sorted({c for t in targets for c in data[(t, "")].get(metric, {})})
        width = 0.8 / max(len(targets), 1)
        for i, t in enumerate(targets):
            vals = data[(t, "")].get(metric, {})
            xs = [j + i * width for j in range(len(clients))]
            med = [vals.get(c, (0, 0, 0))[0] for c in clients]
            err = [
                [vals.get(c, (0, 0, 0))[0] - vals.get(c, (0, 0, 0))[1] for c in clients],
                [vals.get(c, (0, 0, 0))[2] - vals.get(c, (0, 0, 0))[0] for c in clients],
            ]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=t, color=STYLE[t]["color"],
                   alpha=0.5 if t == "tailsrv-s1" else 0.9)
        ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(clients))])
        ax.set_xticklabels([f"{c} clients" for c in clients])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, "shards.svg")


if __name__ == "__main__":
    latency()
    throughput()
    shards()
