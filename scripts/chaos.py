#!/usr/bin/env python3
"""A chaos soak of a distributed job on this machine's services (run by scripts/chaos.sh).

Runs critique -> revise (1 round: 3 model calls a sample) over a synthetic corpus with the mock
model, one coordinator and several workers, while at random intervals it SIGKILLs a worker
(and starts it again), SIGKILLs the coordinator (and starts it again), restarts the RabbitMQ
app, or stops Redis (a private redis-server with an append-only file, on a free port) for
10-30 s. When the coordinator finally exits 0 it checks the output: every sample exactly once,
nothing failed, the counts add up, no coordinator exited by itself before the end; and it
counts the model calls made more than once (every mock call is logged with its seed, unique per
sample and step) against what was in flight at each kill. Prints a report, and writes it as JSON
to WORKDIR/chaos-report.json.
"""

import argparse
import collections
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2f"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A private redis-server whose data survives a stop (append-only file, fsync every second)."""

    def __init__(self, workdir):
        self.port = free_port()
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                 capture_output=True, text=True)
            if out.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        sys.exit("the private redis did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()

    def url(self):
        return f"redis://127.0.0.1:{self.port}"


def write_corpus(path, samples):
    with open(path, "w") as f:
        for i in range(samples):
            f.write(json.dumps({"id": i, "prompt": f"Question {i}: how should one answer request {i * 7919 % 100003}?"}) + "\n")


def write_job(path, corpus, out, constitution, latency_ms, concurrency):
    with open(path, "w") as f:
        f.write(f"""name = "chaos"
pipeline = "critique-revise"
seed = 11
output = "{out}"

[input]
path = "{corpus}"
prompt = "prompt"
id = "id"

[constitution]
path = "{constitution}"
few_shot = false

[critique_revise]
model = "policy"
revisions = 1

[models.policy]
backend = "mock"
latency_ms = {latency_ms}
max_concurrency = {concurrency}
""")


class Cluster:
    def __init__(self, args, workdir, job, redis):
        self.args, self.workdir, self.job, self.redis = args, workdir, job, redis
        self.env = dict(os.environ, CAI_BROKER=BROKER, CAI_STATE=redis.url(),
                        CAI_LOG="info,cai::mock::calls=debug")
        self.workers = {}
        self.restarts = collections.Counter()
        self.coordinator = None
        for n in range(args.workers):
            self.start_worker(f"w{n}")
        self.start_coordinator()

    def log(self, name):
        return open(os.path.join(self.workdir, f"{name}.{self.restarts[name]}.log"), "w")

    def start_worker(self, name):
        self.workers[name] = subprocess.Popen(
            [self.args.cai, "worker", "--id", name, "--metrics-addr", "off"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=self.log(name))
        self.restarts[name] += 1

    def start_coordinator(self):
        self.coordinator = subprocess.Popen(
            [self.args.cai, "run", self.job], env=self.env,
            stdout=subprocess.DEVNULL, stderr=self.log("coordinator"))
        self.restarts["coordinator"] += 1

    def stop_all(self):
        for proc in list(self.workers.values()) + [self.coordinator]:
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in list(self.workers.values()):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True)


def calls_and_repeats(workdir):
    seeds = collections.Counter()
    pattern = re.compile(r"mock call.*?seed=(\d+)")
    for name in os.listdir(workdir):
        if name.startswith("w") and name.endswith(".log"):
            with open(os.path.join(workdir, name), errors="replace") as f:
                for line in f:
                    m = pattern.search(line)
                    if m:
                        seeds[m.group(1)] += 1
    return sum(seeds.values()), sum(n - 1 for n in seeds.values() if n > 1)


def rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cai", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--constitution", required=True)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency-ms", type=int, default=150)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit-s", type=int, default=3600)
    args = p.parse_args()
    rng = random.Random(args.seed)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    corpus, job, out = (os.path.join(workdir, n) for n in ("corpus.jsonl", "job.toml", "out"))
    write_corpus(corpus, args.samples)
    write_job(job, corpus, out, os.path.abspath(args.constitution), args.latency_ms, args.concurrency)
    redis = Redis(workdir)
    cluster = Cluster(args, workdir, job, redis)
    faults = collections.Counter()
    events = []
    started = time.time()
    next_fault = started + rng.uniform(5, 20)
    try:
        while True:
            status = cluster.coordinator.poll()
            if status == 0:
                break
            if status is not None:
                # Exited on its own before the end (not by a kill of ours): start it again, and say so.
                events.append((round(time.time() - started, 1), f"coordinator exited {status}; restarted"))
                cluster.start_coordinator()
            if time.time() - started > args.limit_s:
                sys.exit(f"no finish in {args.limit_s} s")
            if time.time() < next_fault:
                time.sleep(0.2)
                continue
            kind = rng.choice(["kill worker", "kill coordinator", "restart rabbitmq", "stop redis"])
            at = round(time.time() - started, 1)
            if kind == "kill worker":
                name = rng.choice(sorted(cluster.workers))
                cluster.workers[name].kill()
                cluster.workers[name].wait()
                cluster.start_worker(name)
                detail = name
            elif kind == "kill coordinator":
                cluster.coordinator.kill()
                cluster.coordinator.wait()
                cluster.start_coordinator()
                detail = ""
            elif kind == "restart rabbitmq":
                down = rng.uniform(3, 15)
                rabbitmqctl("stop_app")
                time.sleep(down)
                rabbitmqctl("start_app")
                rabbitmqctl("await_startup")
                detail = f"{down:.0f} s down"
            else:
                down = rng.uniform(10, 30)
                redis.stop()
                time.sleep(down)
                redis.start()
                detail = f"{down:.0f} s down"
            faults[kind] += 1
            events.append((at, f"{kind} {detail}".strip()))
            print(f"[{at:7.1f} s] {kind} {detail}", flush=True)
            next_fault = time.time() + rng.uniform(5, 20)
    finally:
        wall = time.time() - started
        cluster.stop_all()
        redis.stop()
    sft, traces, failed = rows(os.path.join(out, "sft.jsonl")), rows(os.path.join(out, "traces.jsonl")), rows(os.path.join(out, "failed.jsonl"))
    ids = [r["id"] for r in sft]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    calls, repeated = calls_and_repeats(workdir)
    in_flight_per_worker = args.concurrency
    bound = faults["kill worker"] * in_flight_per_worker + faults["kill coordinator"] * 8
    counts = manifest["counts"]
    # A coordinator that exited by itself before the end (not killed by us) is a finding.
    unexpected = [event for event in events if "exited" in event[1]]
    report = {
        "samples": args.samples, "workers": args.workers, "concurrency": args.concurrency,
        "latency_ms": args.latency_ms, "wall_s": round(wall, 1),
        "faults": dict(faults), "events": events,
        "sft_rows": len(sft), "unique_ids": len(set(ids)), "trace_rows": len(traces),
        "failed_rows": len(failed), "counts": counts,
        "model_calls": calls, "calls_needed": 3 * args.samples, "repeated_calls": repeated,
        "repeat_bound": bound,
        "unexpected_exits": unexpected,
        "ok": len(sft) == len(set(ids)) == args.samples and not failed and manifest["complete"]
        and sum(counts[k] for k in ("done", "failed", "rejected", "duplicates")) == counts["lines_read"]
        and repeated <= bound and not unexpected,
    }
    with open(os.path.join(workdir, "chaos-report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
