#!/usr/bin/env python3
"""Prints scripts/bench's results (target/bench/results.json) as a table,
each figure next to its peers and its goal (issue 7), marked met or not.
Goals are set for the full run; a --quick run is judged the same way but
on smaller data, so its marks are only indicative.
Usage: scripts/bench_report.py RESULTS_JSON [QUERY]"""

import json
import sys


def main():
    results = json.load(open(sys.argv[1]))
    query = sys.argv[2] if len(sys.argv) > 2 else "query"
    by = {}
    for s in results["scenarios"]:
        by[(s["scenario"], s["system"])] = s

    def get(scenario, system, key):
        return by.get((scenario, system), {}).get(key)

    rows = []

    def row(what, system, figure, goal="", met=None):
        mark = "" if met is None else ("met" if met else "NOT MET")
        rows.append((what, system, figure, goal, mark))

    def rate(v):
        return "skipped" if v is None else f"{v:,.0f} samples/s"

    def ratio(a, b):
        return None if a is None or b in (None, 0) else a / b

    known = get("socket_ingest_known_paths", "ringdb", "samples_per_sec")
    new = get("socket_ingest_new_paths", "ringdb", "samples_per_sec")
    paths = get("socket_ingest_known_paths", "ringdb", "paths")
    row(f"socket ingest, {paths} new paths x 3 rules", "ringdb", rate(new))
    row(f"socket ingest, {paths} known paths x 3 rules", "ringdb", rate(known),
        ">= 1.5M samples/s", None if known is None else known >= 1.5e6)
    rrd = get("rrd_updates", "rrdcached", "samples_per_sec")
    files = get("rrd_updates", "rrdcached", "files")
    row(f"the same kind of updates on {files} RRD files", "rrdcached",
        "skipped" if rrd is None else f"{rrd:,.0f} updates/s")

    ms = by.get(("memory_socket", "ringdb"), {})
    if ms:
        row(f"memory after socket ingest ({ms['archives']} archives)", "ringdb",
            f"{ms['bytes_per_archive']} B/archive allocated, {ms['bytes_per_series']} B RSS/path")
    mf = by.get(("memory_filled_float", "ringdb"), {})
    if mf.get("bytes_per_series") is not None:
        raw = mf["rules"] * mf["buckets"] * 8
        limit = 1.15 * raw + 300
        row(f"memory, {mf['paths']} paths x 3 rules x 360 float buckets (raw {raw} B/path)",
            "ringdb", f"{mf['bytes_per_series']} B RSS/path = {mf['rss_to_raw']} x raw,"
            f" {mf['bytes_over_raw_per_path']} B/path over raw",
            f"<= 1.15 x raw + 300 B = {limit:.0f} B/path", mf["bytes_per_series"] <= limit)

    snap = get("snapshot_one_sample_per_archive", "ringdb", "seconds")
    archives = get("snapshot_one_sample_per_archive", "ringdb", "archives")
    row(f"snapshot, 1 new sample in each of {archives} archives (1440 buckets)", "ringdb",
        "skipped" if snap is None else f"{snap} s", "<= 1 s for 100K",
        None if snap is None else snap * 100000 / archives <= 1.0)
    restore = by.get(("restore", "ringdb"), {})
    if restore.get("seconds") is not None:
        per_million = restore["seconds"] * 1e6 / restore["archives"]
        row(f"restore {restore['archives']} archives (sled -> memory)", "ringdb",
            f"{restore['seconds']} s ({per_million:.1f} s per 1M)", "<= 10 s for 1M",
            per_million <= 10.0)
    big = by.get(("restore_1m", "ringdb"), {})
    if big.get("seconds") is not None:
        row(f"restore {big['archives']} archives (3 rules' shapes)", "ringdb", f"{big['seconds']} s",
            "<= 10 s for 1M", big["seconds"] * 1e6 / big["archives"] <= 10.0)
    rs = by.get(("restart_to_listening", "ringdb"), {})
    if rs:
        row(f"restart to listening ({rs['archives']} archives)", "ringdb", f"{rs['seconds']} s")

    series = get("remote_write", "ringdb", "series")
    rw = {s: get("remote_write", s, "samples_per_sec") for s in ("ringdb", "prometheus", "victoriametrics")}
    vs_prom, vs_vm = ratio(rw["ringdb"], rw["prometheus"]), ratio(rw["ringdb"], rw["victoriametrics"])
    what = f"remote_write, {series} series, 1000/req, 4 conn"
    row(what, "ringdb", rate(rw["ringdb"]))
    row(what, "prometheus 2.42", rate(rw["prometheus"]))
    row(what, "victoriametrics", rate(rw["victoriametrics"]))
    row(what, "ringdb / prometheus", "skipped" if vs_prom is None else f"{vs_prom:.2f}x",
        ">= 3x", None if vs_prom is None else vs_prom >= 3.0)
    row(what, "ringdb / vm", "skipped" if vs_vm is None else f"{vs_vm:.2f}x",
        ">= 1.2x", None if vs_vm is None else vs_vm >= 1.2)
    def memory_rows(scenario, what, systems):
        held = {s: get(scenario, s, "bytes_per_series") for s in systems}
        peers = [b for s, b in held.items() if s != "ringdb" and b is not None]
        for system, b in held.items():
            lead = system == "ringdb" and b is not None and peers
            row(what, system, "skipped" if b is None else f"{b:,} B",
                "least of all" if lead else "", (b < min(peers)) if lead else None)

    memory_rows("memory_label_sets", f"RSS per label-set series after remote_write ({series}, 20 samples each)",
                ("ringdb", "prometheus", "victoriametrics"))
    qset = get("memory_query_set", "ringdb", "series")
    memory_rows("memory_query_set", f"RSS growth per series of the query data set ({qset}, 240 samples over 1 h)",
                ("ringdb", "prometheus"))

    qs = get("query_sum_rate", "ringdb", "series")
    q = {s: (get("query_sum_rate", s, "p50_ms"), get("query_sum_rate", s, "p99_ms"))
         for s in ("ringdb", "prometheus")}
    qwhat = f"query {query}, {qs} series, 1h, 60s"
    p50, prom50 = q["ringdb"][0], q["prometheus"][0]
    row(qwhat, "ringdb", f"p50 {p50} ms, p99 {q['ringdb'][1]} ms", "p50 <= 20 ms",
        None if p50 is None else p50 <= 20)
    row(qwhat, "prometheus 2.42", f"p50 {prom50} ms, p99 {q['prometheus'][1]} ms")
    speedup = ratio(prom50, p50)
    row(qwhat, "prometheus / ringdb", "skipped" if speedup is None else f"{speedup:.1f}x faster",
        ">= 5x faster", None if speedup is None else speedup >= 5)

    m = results["machine"]
    print(f"\nmachine: {m['cores']} cores, {m['cpu']}" + ("  (quick run: smaller data)" if results.get("quick") else ""))
    widths = [max(len(r[i]) for r in rows + [("scenario", "system", "result", "goal", "")]) for i in range(4)]
    header = ("scenario", "system", "result", "goal", "")
    for r in [header] + rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])


if __name__ == "__main__":
    main()
