#!/usr/bin/env bash
# Makes sure the services the test suite talks to answer on loopback: RabbitMQ (5672, guest/guest)
# and Redis (6379). Starts whichever is not answering and waits (up to 90 s each) until it does.
# Also installs Prometheus (Debian package), which the telemetry test runs to scrape a worker.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
    local name=$1 port=$2 deadline=$((SECONDS + 90))
    until answers "$port"; do
        if ((SECONDS > deadline)); then
            echo "services: $name did not answer on 127.0.0.1:$port within 90 s" >&2
            exit 1
        fi
        sleep 1
    done
}

if ! command -v redis-server >/dev/null || ! command -v rabbitmq-server >/dev/null; then
    echo "services: installing redis-server and rabbitmq-server (Debian packages)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server rabbitmq-server >&2
fi
if ! command -v prometheus >/dev/null; then
    echo "services: installing prometheus (Debian package)" >&2
    { apt-get install -y -qq --no-install-recommends prometheus ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }; } >&2
fi
if ! answers 6379; then
    echo "services: starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
if ! answers 5672; then
    echo "services: starting RabbitMQ" >&2
    rabbitmq-server -detached
fi
wait_for Redis 6379
wait_for RabbitMQ 5672
# The AMQP port opens before the broker accepts connections; wait until the app is running.
deadline=$((SECONDS + 90))
until rabbitmqctl -q await_startup >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
        echo "services: RabbitMQ did not finish starting within 90 s" >&2
        exit 1
    fi
    sleep 1
done
