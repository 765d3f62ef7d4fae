#!/usr/bin/env bash
# Tests the container image end to end on this machine:
# 1. builds it (scripts/build-image.sh: podman or docker, installing podman if neither works);
# 2. makes sure RabbitMQ and Redis answer on loopback (scripts/services.sh, as scripts/test.sh);
# 3. runs two workers from the image (--network host, --read-only, no tmpfs) and checks a
#    worker's /healthz and /readyz and that it runs as uid 65532;
# 4. runs the coordinator from the image too on a copy of deploy/jobs/mock.toml (500 prompts,
#    about 2,500 mock calls of 200 ms) with the job and the corpus mounted read-only and the
#    output on a named volume;
# 5. mid-run sends SIGTERM to a worker that has tasks in flight and checks that it drains: its
#    log says "draining: finishing tasks in flight" then "worker stopped", no task is handed back
#    for running out of grace, it exits 0;
# 6. checks that the job completed with every sample exactly once: one sft.jsonl row per distinct
#    prompt of the 500 lines, no id twice, the manifest's counts (the corpus repeats 8 prompts:
#    492 done, 8 duplicates) and model calls (5 per sample: none repeated, none lost); that a
#    second coordinator run finds the job complete and writes nothing; and that no container
#    wrote to its root filesystem;
# 7. removes what it started (containers, volume, the job's queues and Redis keys, temp files),
#    also on failure, after printing the containers' logs.
#
# Unique job name and Redis prefix (image-test-PID-RANDOM), so it runs beside other tests.
# Every wait has a deadline. Takes about 30 s once the release build of cai is current; the
# release build it starts with takes 10-20 min from cold on 2 cores (a few minutes after an edit),
# which is why scripts/test.sh does not run it: run it apart, before changing deploy/ or a release.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/build-image.sh
# shellcheck source=scripts/image-engine.sh
source scripts/image-engine.sh
scripts/services.sh
if ! command -v curl >/dev/null; then
    echo "image-test: installing curl (Debian package)" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; }; } >&2
fi

IMAGE="${CAI_IMAGE:-localhost/cai}:latest"
run_id="image-test-$$-$RANDOM"
job=$run_id
limit=500
export CAI_BROKER='amqp://guest:guest@127.0.0.1:5672/%2f'
export CAI_STATE="redis://127.0.0.1:6379/0?prefix=$run_id"
CAI_JOB_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
export CAI_JOB_KEY CAI_LOG=info
tmp="$(mktemp -d "${TMPDIR:-/tmp}/cai-image-test.XXXXXX")"
volume="$run_id-out"
coordinator="$run_id-coordinator"
w1="$run_id-worker-1" w2="$run_id-worker-2"
containers=("$w1" "$w2" "$coordinator" "$run_id-rerun" "$run_id-copy")

say() { echo "image-test: $*"; }
fail() {
    echo "image-test: FAIL $*" >&2
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    if ((rc != 0)); then
        for c in "${containers[@]}"; do
            if $ENGINE container exists "$c" 2>/dev/null || $ENGINE inspect "$c" >/dev/null 2>&1; then
                echo "---- logs of $c (last 30 lines)" >&2
                $ENGINE logs --tail 30 "$c" >&2 2>&1
            fi
        done
    fi
    for c in "${containers[@]}"; do
        $ENGINE rm -f "$c" >/dev/null 2>&1
    done
    $ENGINE volume rm -f "$volume" >/dev/null 2>&1
    for queue in tasks results dead; do
        rabbitmqctl -q delete_queue "cai.$job.$queue" >/dev/null 2>&1
    done
    redis-cli --scan --pattern "$run_id:*" | xargs -r redis-cli del >/dev/null 2>&1
    rm -rf "$tmp"
    if ((rc == 0)); then say "cleaned up (containers, volume, queues cai.$job.*, Redis keys $run_id:*)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $1 seconds until the command after it succeeds, polling every 0.2 s.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }
answers_200() { [[ "$(http_code "$1")" == 200 ]]; }
# The sum of a metric's series for this job on a worker's /metrics (0 when absent).
metric() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v name="$2" -v job="cai_job=\"$job\"" -v extra="${3:-}" '
            index($0, name "{") == 1 && index($0, job) && (extra == "" || index($0, extra)) { sum += $NF }
            END { print sum + 0 }'
}
running() { [[ "$($ENGINE inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]; }
exited() { ! running "$1"; }
exit_code() { $ENGINE inspect --format '{{.State.ExitCode}}' "$1"; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
p1="$(free_port)" p2="$(free_port)"
while [[ "$p2" == "$p1" ]]; do p2="$(free_port)"; done

# Every container: host network (RabbitMQ and Redis on 127.0.0.1), read-only root filesystem and
# no tmpfs (podman would mount one on /tmp, /var/tmp and /run), the services' URLs and the job key.
run=("$ENGINE" run -d --network host --read-only -e CAI_BROKER -e CAI_STATE -e CAI_JOB_KEY -e CAI_LOG)
[[ "$ENGINE" == podman ]] && run+=(--read-only-tmpfs=false)

# The job: deploy/jobs/mock.toml under a unique name and output directory. Mounted where compose
# mounts deploy/jobs, so its relative paths reach the corpus and the constitution the same way.
mkdir -p "$tmp/jobs"
sed -e "s|^name = \"mock\"|name = \"$job\"|" -e "s|^output = \"../../out/mock\"|output = \"../../out/$job\"|" \
    deploy/jobs/mock.toml >"$tmp/jobs/job.toml"
for line in "name = \"$job\"" "output = \"../../out/$job\"" "limit = $limit" "latency_ms = 200"; do
    grep -qxF "$line" "$tmp/jobs/job.toml" || fail "deploy/jobs/mock.toml changed shape: no line '$line' in the copy"
done
$ENGINE volume create "$volume" >/dev/null

say "$ENGINE: image $IMAGE, job $job, state prefix $run_id"
"${run[@]}" --name "$w1" "$IMAGE" worker --grace-s 30 --id "$w1" --metrics-addr "127.0.0.1:$p1" >/dev/null
"${run[@]}" --name "$w2" "$IMAGE" worker --grace-s 30 --id "$w2" --metrics-addr "127.0.0.1:$p2" >/dev/null

wait_until 30 answers_200 "http://127.0.0.1:$p1/healthz" || fail "worker 1: /healthz answered $(http_code "http://127.0.0.1:$p1/healthz"), not 200, within 30 s"
wait_until 60 answers_200 "http://127.0.0.1:$p1/readyz" || fail "worker 1: /readyz answered $(http_code "http://127.0.0.1:$p1/readyz"), not 200, within 60 s"
wait_until 60 answers_200 "http://127.0.0.1:$p2/readyz" || fail "worker 2: /readyz not 200 within 60 s"
say "worker 1 (127.0.0.1:$p1): /healthz 200, /readyz 200; worker 2 (127.0.0.1:$p2): /readyz 200"
[[ "$($ENGINE inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$w1")" == true ]] || fail "worker 1's root filesystem is not read-only"
if [[ "$ENGINE" == podman ]]; then
    uid="$(podman top "$w1" huser | tail -n +2 | tr -d ' ')"
else
    uid="$(docker top "$w1" -o uid | tail -n +2 | tr -d ' ')"
fi
[[ "$uid" == 65532 ]] || fail "worker 1 runs as uid '$uid', not 65532"
say "worker 1's process runs as uid $uid; root filesystem read-only"

started=$SECONDS
"${run[@]}" --name "$coordinator" \
    -v "$tmp/jobs:/cai/deploy/jobs:ro" -v "$PWD/data:/cai/data:ro" -v "$PWD/constitutions:/cai/constitutions:ro" \
    -v "$volume:/cai/out" "$IMAGE" run /cai/deploy/jobs/job.toml >/dev/null

# Mid-run: worker 1 has finished samples and holds tasks; SIGTERM it and watch it drain.
busy() {
    (($(metric "$p1" cai_samples_total 'outcome="done"') >= 16)) && (($(metric "$p1" cai_tasks_in_flight) >= 1))
}
wait_until 120 busy || fail "worker 1 did no work within 120 s"
done_before="$(metric "$p1" cai_samples_total 'outcome="done"')"
in_flight="$(metric "$p1" cai_tasks_in_flight)"
running "$coordinator" || fail "the coordinator finished before worker 1 could be stopped mid-run"
$ENGINE kill --signal TERM "$w1" >/dev/null
say "SIGTERM to worker 1 after $((SECONDS - started)) s: $done_before samples done, $in_flight tasks in flight"
ready_draining="$(http_code "http://127.0.0.1:$p1/readyz")"
last_done=$done_before
while running "$w1"; do
    d="$(metric "$p1" cai_samples_total 'outcome="done"')"
    ((d > last_done)) && last_done=$d
    ((SECONDS - started < 120)) || fail "worker 1 did not stop within 120 s of SIGTERM"
    sleep 0.2
done
w1_code="$(exit_code "$w1")"
w1_log="$($ENGINE logs "$w1" 2>&1)"
[[ "$w1_code" == 0 ]] || fail "worker 1 exited $w1_code after SIGTERM, not 0"
grep -q 'draining: finishing tasks in flight' <<<"$w1_log" || fail "worker 1's log does not say it drained"
grep -q 'worker stopped' <<<"$w1_log" || fail "worker 1's log does not say it stopped"
! grep -q 'grace period over' <<<"$w1_log" || fail "worker 1 ran out of grace and handed tasks back"
say "worker 1 drained: exit 0, log 'draining: finishing tasks in flight' then 'worker stopped', no task handed back; /readyz while draining: $ready_draining; samples done by it: $done_before at SIGTERM, >= $last_done at the last scrape"

wait_until 300 exited "$coordinator" || fail "the coordinator did not finish within 300 s"
c_code="$(exit_code "$coordinator")"
[[ "$c_code" == 0 ]] || fail "the coordinator exited $c_code"
say "coordinator exited 0 after $((SECONDS - started)) s"
if ! answers_200 "http://127.0.0.1:$p2/healthz" || ! answers_200 "http://127.0.0.1:$p2/readyz"; then
    fail "worker 2 is not healthy and ready after the job"
fi

# The output, copied off the volume through a container that is never started.
$ENGINE create --name "$run_id-copy" -v "$volume:/cai/out" "$IMAGE" >/dev/null
$ENGINE cp "$run_id-copy:/cai/out/$job" "$tmp/out"
check_output() {
    python3 - "$1" "$tmp/jobs/job.toml" <<'PY'
import collections, json, os, sys, tomllib
out, job_file = sys.argv[1:]
job = tomllib.load(open(job_file, "rb"))
# What the coordinator should make of the corpus: the first `limit` lines, a sample for each
# distinct prompt, the repeats counted as duplicates (the job file's path, from deploy/jobs/).
corpus = os.path.normpath(os.path.join("deploy/jobs", job["input"]["path"]))
limit = job["input"]["limit"]
lines = [json.loads(line) for line in open(corpus)][:limit]
distinct = len({line[job["input"]["prompt"]] for line in lines})
calls_per_sample = 1 + 2 * job["critique_revise"]["revisions"]  # answer, then critique + revise
rows = [json.loads(line) for line in open(f"{out}/sft.jsonl") if line.strip()]
ids = collections.Counter(str(r["id"]) for r in rows)
twice = sorted(i for i, n in ids.items() if n > 1)
manifest = json.load(open(f"{out}/manifest.json"))
counts = manifest.get("counts") or {}
want = {"lines_read": limit, "done": distinct, "failed": 0, "rejected": 0, "duplicates": limit - distinct}
problems = [f"counts.{k} = {counts.get(k)}, want {v}" for k, v in want.items() if counts.get(k) != v]
if len(rows) != distinct or twice:
    problems.append(f"sft.jsonl: {len(rows)} rows, {len(ids)} distinct ids, ids more than once: {twice[:5]} (want {distinct} once each)")
if not manifest.get("complete"):
    problems.append("manifest.json: not complete")
if manifest.get("model_calls") != distinct * calls_per_sample:
    problems.append(f"model_calls = {manifest.get('model_calls')}, want {distinct} x {calls_per_sample} (a call repeated or lost)")
if problems:
    print("; ".join(problems))
    sys.exit(1)
print(f"{len(rows)} rows in sft.jsonl, one per distinct prompt of the {limit} lines, no id twice; manifest complete, "
      f"counts {json.dumps(counts, sort_keys=True)}, {manifest['model_calls']} model calls = {distinct} x {calls_per_sample}")
PY
}
summary="$(check_output "$tmp/out")" || fail "the output: $summary"
say "output: $summary"
sha_before="$(sha256sum "$tmp/out/sft.jsonl" | cut -d' ' -f1)"

# Exactly once, also when the coordinator runs again: it finds the job complete, writes no row.
"${run[@]}" --name "$run_id-rerun" \
    -v "$tmp/jobs:/cai/deploy/jobs:ro" -v "$PWD/data:/cai/data:ro" -v "$PWD/constitutions:/cai/constitutions:ro" \
    -v "$volume:/cai/out" "$IMAGE" run /cai/deploy/jobs/job.toml >/dev/null
wait_until 120 exited "$run_id-rerun" || fail "the second coordinator run did not finish within 120 s"
[[ "$(exit_code "$run_id-rerun")" == 0 ]] || fail "the second coordinator run exited $(exit_code "$run_id-rerun")"
rm -rf "$tmp/out"
$ENGINE cp "$run_id-copy:/cai/out/$job" "$tmp/out"
[[ "$(sha256sum "$tmp/out/sft.jsonl" | cut -d' ' -f1)" == "$sha_before" ]] || fail "the second coordinator run changed sft.jsonl"
say "second coordinator run: exit 0, sft.jsonl unchanged"

# Nothing written outside the volume: the containers' root filesystems hold no change but the
# mount points the engine makes (the volumes', /etc/hosts, /etc/resolv.conf and their folders).
unexpected_changes() {
    local c=$1 path mounts
    declare -A allowed=()
    mounts="$($ENGINE inspect --format '{{range .Mounts}}{{.Destination}} {{end}}' "$c")"
    for path in $mounts /etc/hosts /etc/hostname /etc/resolv.conf /run/.containerenv /dev /proc /sys; do
        while [[ -n "$path" && "$path" != / ]]; do
            allowed[$path]=1
            path="$(dirname "$path")"
        done
    done
    $ENGINE diff "$c" | while read -r _ path; do
        [[ -n "${allowed[$path]:-}" ]] || echo "$path"
    done
}
for c in "$w1" "$w2" "$coordinator" "$run_id-rerun"; do
    changes="$(unexpected_changes "$c")"
    [[ -z "$changes" ]] || fail "$c wrote to its root filesystem: $changes"
done
say "no container wrote to its root filesystem ($ENGINE diff: only the engine's mount points); the output is on volume $volume"
say "ok"
