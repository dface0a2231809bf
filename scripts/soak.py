#!/usr/bin/env python3
"""Plots a `warren-bench soak` CSV: the worker's RSS, open fds and in-flight tasks over
time, with tasks done on a second axis, so growth after warm-up is visible at a glance.

    python3 scripts/soak.py soak.csv soak.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    rows = list(csv.DictReader(open(src, newline="")))
    if not rows:
        sys.exit(f"{src}: no samples")
    t = [float(r["elapsed_s"]) for r in rows]
    done = [int(r["tasks_done"]) for r in rows]
    rss = [int(r["rss_kib"]) / 1024 for r in rows]
    fds = [int(r["fds"]) for r in rows]
    # in_flight is only read every --scrape-interval: plot the samples that have it.
    scraped = [(float(r["elapsed_s"]), float(r["in_flight"])) for r in rows if r["in_flight"]]

    fig, (ax_rss, ax_fds, ax_flight) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    ax_rss.plot(t, rss, color="tab:blue")
    ax_rss.set_ylabel("worker RSS (MiB)")
    ax_rss.set_ylim(bottom=0)
    ax_done = ax_rss.twinx()
    ax_done.plot(t, done, color="tab:gray", linestyle="--")
    ax_done.set_ylabel("tasks done")
    ax_fds.plot(t, fds, color="tab:green")
    ax_fds.set_ylabel("open fds")
    ax_flight.plot([s[0] for s in scraped], [s[1] for s in scraped], color="tab:red", marker="o")
    ax_flight.set_ylabel("tasks in flight")
    ax_flight.set_xlabel("seconds")
    fig.suptitle(f"warren soak: {done[-1]} echo tasks through one worker")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: soak.py SAMPLES.csv PLOT.png")
    main(sys.argv[1], sys.argv[2])
