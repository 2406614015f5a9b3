#!/usr/bin/env python3
"""The cohort-sync benchmark: a 2,000,000-member cohort against the sandbox.

Builds the release binary, starts `cohort-sync sandbox` as its own process, and runs
`cohort-sync sync` as separate processes, measuring each sync process alone with
wait4(2): wall time, CPU time (user + sys) and peak RSS. The sandbox's CPU time during
each run is read from /proc and reported separately.

    python3 bench/run.py            # every case, 3 runs each, medians
    python3 bench/run.py --runs 5   # more runs
    python3 bench/run.py --quick    # 200,000 members, 1 run: a smoke test

Cases:
  1. first sync of the cohort (gzipped CSV via the 302 path, 2% anonymous), empty state
  2. the next sync after 1% churn (1% leave, 1% join)
  3. an unchanged cohort (no export is started)
  4. pushes against a 1Flow that answers each request after 20 ms, concurrency 1/4/16
  5. first sync of the same cohort exported with 5 extra user-property columns
  6. an idle `cohort-sync run` with 100 configured cohorts: RSS and CPU over 20 s
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "cohort-sync")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Sandbox:
    """`cohort-sync sandbox` as a child process, driven by lines on its stdin."""

    def __init__(self, members, properties=0):
        args = [BIN, "sandbox", "--members", str(members), "--anonymous", "0.02"]
        if properties:
            args += ["--properties", str(properties)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.hello = json.loads(self.proc.stdout.readline())

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"sandbox: {line!r} -> {answer!r}")
        return answer

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=10)


def write_config(path, hello, state, concurrency=4, cohorts=None):
    body = f"""[amplitude]
api_key = "{hello['amplitude_api_key']}"
secret_key = "{hello['amplitude_secret_key']}"
base_url = "{hello['amplitude_url']}"
poll_interval = "20ms"

[oneflow]
api_key = "{hello['oneflow_api_key']}"
base_url = "{hello['oneflow_url']}"
batch_size = 1000
concurrency = {concurrency}

[state]
path = "{state}"

[log]
level = "warn"

[server]
listen = ""
"""
    for cohort_id, schedule in cohorts or [(hello["cohort_id"], "daily")]:
        body += f'\n[[cohorts]]\namplitude_id = "{cohort_id}"\nschedule = "{schedule}"\n'
    with open(path, "w") as f:
        f.write(body)


def measure_sync(config, sandbox, extra=()):
    """Runs one `sync --json` and measures the process alone."""
    before = sandbox.cpu()
    start = time.monotonic()
    proc = subprocess.Popen(
        [BIN, "sync", "--config", config, "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"sync failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "sandbox_cpu": sandbox.cpu() - before,
        "summary": summary,
    }


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def row(name, runs, ids_key=None):
    ids = None
    if ids_key:
        ids = statistics.median((r["summary"]["added"] + r["summary"]["removed"]) / r[ids_key] for r in runs)
    return {
        "case": name,
        "wall": median(runs, "wall"),
        "cpu": median(runs, "cpu"),
        "rss_mb": median(runs, "rss_mb"),
        "sandbox_cpu": median(runs, "sandbox_cpu"),
        "ids_per_s": ids,
        "runs": len(runs),
    }


def bench_main(members, runs, work):
    results = []
    sandbox = Sandbox(members)
    try:
        config = os.path.join(work, "main.toml")
        state = os.path.join(work, "main.db")

        first = []
        for _ in range(runs):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(state + suffix):
                    os.remove(state + suffix)
            write_config(config, sandbox.hello, state)
            first.append(measure_sync(config, sandbox))
        results.append(row(f"1. first sync, {members:,} members", first, "wall"))

        churn = max(1, members // 100)
        churned = []
        for _ in range(runs):
            sandbox.command(f"churn {churn} {churn}")
            run = measure_sync(config, sandbox)
            # Anonymous members among the leavers were never in 1Flow: fewer removes.
            s = run["summary"]
            assert s["added"] == churn and 0 < s["removed"] == s["planned_removes"] <= churn, run
            churned.append(run)
        results.append(row(f"2. 1% churn ({churn:,} leave, {churn:,} join)", churned, "wall"))

        unchanged = []
        for _ in range(runs):
            run = measure_sync(config, sandbox)
            assert run["summary"]["result"] == "unchanged", run
            unchanged.append(run)
        results.append(row("3. unchanged (no export)", unchanged))

        sandbox.command("latency 20")
        for concurrency in (1, 4, 16):
            write_config(config, sandbox.hello, state, concurrency=concurrency)
            pushed = []
            for _ in range(runs):
                sandbox.command(f"churn 0 {25_000 * concurrency}")
                run = measure_sync(config, sandbox)
                run["push"] = run["summary"]["push_secs"]
                pushed.append(run)
            r = row(f"4. 20 ms 1Flow, concurrency {concurrency}", pushed, "push")
            r["target_ids_per_s"] = 0.8 * concurrency * 1000 / 0.020
            results.append(r)
        sandbox.command("latency 0")
        members_now = int(sandbox.command("members").split()[1])
        print(f"  (sandbox list holds {members_now:,} members after the runs)", file=sys.stderr)
    finally:
        sandbox.close()
    return results


def bench_wide(members, runs, work):
    sandbox = Sandbox(members, properties=5)
    try:
        config = os.path.join(work, "wide.toml")
        state = os.path.join(work, "wide.db")
        wide = []
        for _ in range(runs):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(state + suffix):
                    os.remove(state + suffix)
            write_config(config, sandbox.hello, state)
            wide.append(measure_sync(config, sandbox))
        return [row("5. first sync, 5 extra property columns", wide, "wall")]
    finally:
        sandbox.close()


def bench_idle(work, seconds=20):
    sandbox = Sandbox(1000)
    try:
        config = os.path.join(work, "idle.toml")
        cohorts = [(f"idle{i:03}", "0 0 1 1 *") for i in range(100)]
        write_config(config, sandbox.hello, os.path.join(work, "idle.db"), cohorts=cohorts)
        proc = subprocess.Popen([BIN, "run", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(seconds)
        cpu_idle = cpu_seconds(proc.pid) - cpu_before
        with open(f"/proc/{proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        rss_mb = int(status["VmHWM"].split()[0]) / 1024
        proc.terminate()
        proc.wait(timeout=15)
        return [{"case": f"6. idle `run`, 100 cohorts, {seconds} s", "wall": None, "cpu": cpu_idle,
                 "rss_mb": rss_mb, "sandbox_cpu": None, "ids_per_s": None, "runs": 1}]
    finally:
        sandbox.close()


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(results):
    lines = [
        "| case | wall (s) | CPU user+sys (s) | peak RSS (MB) | ids/s | target ids/s | sandbox CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {fmt(r['wall'], '.2f')} | {fmt(r['cpu'], '.2f')} | {fmt(r['rss_mb'], '.0f')} "
            f"| {fmt(r['ids_per_s'], ',.0f')} | {fmt(r.get('target_ids_per_s'), ',.0f')} | {fmt(r['sandbox_cpu'], '.2f')} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--members", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 members, 1 run")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.members, args.runs = 200_000, 1
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)

    with tempfile.TemporaryDirectory() as work:
        results = bench_main(args.members, args.runs, work)
        results += bench_wide(args.members, args.runs, work)
        results += bench_idle(work)

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{mem_gb:.0f} GiB; medians of {args.runs} runs\n")
    print(table(results))


if __name__ == "__main__":
    main()
