#!/usr/bin/env python3
"""The damage table (issue 15): what a damaged snapshot store does to ringdb.

Builds a store of ARCHIVES archives with a real daemon (one rule, samples
over several pages, clean SIGTERM), then for each damage case works on two
copies of it:

  start    starts ringdb on the damaged copy: does it start; if so, how many
           archives it serves and which losses it reports
           (ringdb_restore_skipped_total{reason});
  recover  runs `ringdb recover` on the other copy (never started), then
           starts ringdb on the result and counts the archives it serves.

Cases: truncation of snapshots/db at 5 points, one flipped bit at 20 random
offsets of snapshots/db (fixed seed), and one flipped byte in sled's conf and
snap.* files. Standard library only:

    cargo build && python3 scripts/damage.py --ringdb target/debug/ringdb
"""

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ringdb_client import Client  # noqa: E402

CONFIG = """data_dir: data
listen: {socket: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0}
snapshot: {interval: 1h}
rules:
  - {name: m, prefix: '*', type: sum, timeframe: 60, limit: 300, value_size: large}
"""


class Daemon:
    """A ringdb process on a data folder; `started` is False when it exited."""

    def __init__(self, ringdb, root, timeout=120):
        self.root = root
        self.proc = subprocess.Popen(
            [ringdb, "--config", os.path.join(root, "ringdb.yaml"), "--log", "ringdb=error"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started, self.http, self.socket = False, None, None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                m = re.search(r"socket=(\S+) http=(\S+)", line)
                if m:
                    self.socket, self.http = m.group(1), m.group(2)
                    self.started = True
                    return
            elif self.proc.poll() is not None:
                break
        self.proc.wait(timeout=30)
        self.stderr = self.proc.stderr.read()

    def tls(self, name):
        return os.path.join(self.root, "data", "tls", name)

    def metrics(self):
        ctx = ssl.create_default_context(cafile=self.tls("ca.pem"))
        ctx.load_cert_chain(self.tls("client.pem"), self.tls("client-key.pem"))
        ctx.check_hostname = False
        with urllib.request.urlopen(f"https://{self.http}/metrics", context=ctx, timeout=30) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.stderr = self.proc.stderr.read()
        return self.proc.returncode


def build_base(ringdb, root, archives):
    os.makedirs(root)
    with open(os.path.join(root, "ringdb.yaml"), "w") as f:
        f.write(CONFIG)
    d = Daemon(ringdb, root)
    assert d.started, d.stderr
    host, port = d.socket.rsplit(":", 1)
    now = int(time.time())
    with Client(host, int(port), d.tls("ca.pem"), d.tls("client.pem"),
                d.tls("client-key.pem"), server_name="localhost") as c:
        for i in range(archives):
            for k in range(12):  # 12 samples over 4 hours: several pages
                c.send(f"damage-{i:05d}", now - k * 1200 - i % 60, i * 100 + k)
    want = archives * 12
    deadline = time.monotonic() + 60
    while d.metrics().get('ringdb_samples_accepted_total{protocol="socket"}', 0) < want:
        assert time.monotonic() < deadline, "samples not accepted"
        time.sleep(0.2)
    served = d.metrics()["ringdb_archives"]
    assert d.stop() == 0, d.stderr
    return int(served)


def flip(path, offset, rng):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << rng.randrange(8))]))


def cases(base, seed):
    db = os.path.join(base, "data", "snapshots", "db")
    size = os.path.getsize(db)
    out = []
    for label, cut in [("0", 0), ("1/4", size // 4), ("1/2", size // 2),
                       ("3/4", size * 3 // 4), ("size-4KiB", size - 4096)]:
        out.append((f"truncate db to {label} ({cut} B)",
                    lambda root, cut=cut: os.truncate(os.path.join(root, "data/snapshots/db"), cut)))
    rng = random.Random(seed)
    for _ in range(20):
        off = rng.randrange(size)
        # The bit flipped is chosen by the offset: both copies get the same.
        out.append((f"flip a bit of db at {off}",
                    lambda root, off=off: flip(os.path.join(root, "data/snapshots/db"), off,
                                               random.Random(off))))
    snaps = sorted(n for n in os.listdir(os.path.join(base, "data", "snapshots")) if n.startswith("snap."))
    for name in ["conf"] + snaps[:1]:
        p = os.path.join(base, "data", "snapshots", name)
        off = os.path.getsize(p) // 2
        out.append((f"flip a bit of {name} at {off}",
                    lambda root, name=name, off=off: flip(os.path.join(root, "data/snapshots", name), off,
                                                          random.Random(off))))
    return out, size


def copy(base, to):
    shutil.copytree(base, to)


def run_case(ringdb, base, work, n, name, damage):
    row = {"case": name}
    a, b = os.path.join(work, f"{n}-start"), os.path.join(work, f"{n}-recover")
    copy(base, a)
    copy(base, b)
    damage(a)
    damage(b)
    d = Daemon(ringdb, a)
    row["starts"] = d.started
    if d.started:
        m = d.metrics()
        row["served"] = int(m.get("ringdb_archives", 0))
        row["reported"] = {k.split('"')[1]: int(v) for k, v in m.items()
                           if k.startswith("ringdb_restore_skipped_total") and v}
        d.stop()
    else:
        row["refusal"] = next((l for l in d.stderr.splitlines() if l.startswith("ringdb: ")), d.stderr[-200:])
        row["names_recover"] = "ringdb recover" in d.stderr
    r = subprocess.run([ringdb, "recover", "--config", os.path.join(b, "ringdb.yaml")],
                       capture_output=True, text=True, timeout=600)
    row["recover_exit"] = r.returncode
    m = re.search(r"recovered: (\d+) archives \((\d+) of them without any page", r.stdout)
    row["recovered"] = int(m.group(1)) if m else None
    row["recovered_empty"] = int(m.group(2)) if m else None
    row["recover_out"] = (r.stdout + r.stderr).strip()
    if r.returncode == 0:
        d = Daemon(ringdb, b)
        row["after_recover_starts"] = d.started
        if d.started:
            row["after_recover_served"] = int(d.metrics().get("ringdb_archives", 0))
            d.stop()
    shutil.rmtree(a)
    shutil.rmtree(b)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ringdb", default="target/debug/ringdb")
    ap.add_argument("--archives", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    ringdb = os.path.abspath(args.ringdb)
    with tempfile.TemporaryDirectory(prefix="ringdb-damage-") as work:
        base = os.path.join(work, "base")
        served = build_base(ringdb, base, args.archives)
        todo, size = cases(base, args.seed)
        print(f"store: {served} archives, snapshots/db {size} bytes, seed {args.seed}")
        print("| damage | daemon starts | archives served / losses reported at start | `recover` brings back | served after recover |")
        print("|---|---|---|---|---|")
        rows = []
        for n, (name, damage) in enumerate(todo):
            row = run_case(ringdb, base, work, n, name, damage)
            rows.append(row)
            if row["starts"]:
                start = "yes"
                seen = f"{row['served']}; reported {row['reported'] or 'none'}"
            else:
                start = "no, names `ringdb recover`" if row["names_recover"] else "no"
                m = re.search(r"(\d+) of the (\d+) archives", row["refusal"])
                d = re.search(r"damaged record at byte (\d+)", row["refusal"])
                seen = (f"reports {m.group(1)} of {m.group(2)} missing" if m
                        else f"damaged record at byte {d.group(1)}, found before sled opens" if d
                        else re.sub(r"^ringdb: snapshot store \S+: ", "", row["refusal"])[:80].replace("|", "/"))
            empty = f" ({row['recovered_empty']} without pages)" if row.get("recovered_empty") else ""
            rec = (f"{row['recovered']} of {served}{empty}" if row["recovered"] is not None
                   else "failed: " + row["recover_out"].splitlines()[-1][:80].replace("|", "/"))
            after = row.get("after_recover_served", "-")
            print(f"| {name} | {start} | {seen} | {rec} | {after} |", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
