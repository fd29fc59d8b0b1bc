#!/usr/bin/env bash
# Makes sure the brokers the tests talk to are running on loopback, starting any that is
# not, or exits non-zero naming the one that is missing and how to start it.
# Usage: scripts/services.sh            (all)   |   scripts/services.sh nats
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2 seconds=$3
  for _ in $(seq 1 $((seconds * 10))); do
    port_open "$port" && return 0
    sleep 0.1
  done
  echo "error: $name did not start listening on 127.0.0.1:$port within ${seconds}s" >&2
  return 1
}

ensure_nats() {
  if port_open 4222; then
    echo "NATS: running on 127.0.0.1:4222"
    return
  fi
  if ! command -v nats-server >/dev/null; then
    echo "error: NATS is not running on 127.0.0.1:4222 and nats-server is not installed (apt-get install nats-server)" >&2
    exit 1
  fi
  local store=${NATS_STORE_DIR:-/tmp/nomad-relay-nats-store}
  mkdir -p "$store"
  echo "NATS: starting nats-server -a 127.0.0.1 -p 4222 -js -sd $store"
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$store" >"$store/nats-server.log" 2>&1 &
  wait_port NATS 4222 20
}

ensure_rabbitmq() {
  if port_open 5672; then
    echo "RabbitMQ: running on 127.0.0.1:5672"
    return
  fi
  if ! command -v rabbitmq-server >/dev/null; then
    echo "error: RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2
    exit 1
  fi
  echo "RabbitMQ: starting rabbitmq-server -detached"
  rabbitmq-server -detached
  wait_port RabbitMQ 5672 120
}

# A Kafka-protocol broker: tansu from crates.io (about 10 minutes to build the first time;
# the installed binary is reused), in memory, on 127.0.0.1:9092.
ensure_kafka() {
  if port_open 9092; then
    echo "Kafka (tansu): running on 127.0.0.1:9092"
    return
  fi
  if ! command -v tansu >/dev/null; then
    echo "Kafka (tansu): installing with cargo install tansu --version 0.6.0 --locked --features dynostore"
    cargo install tansu --version 0.6.0 --locked --features dynostore
  fi
  local log=${TANSU_LOG:-/tmp/nomad-relay-tansu.log}
  echo "Kafka (tansu): starting tansu broker on 127.0.0.1:9092 (in memory), log in $log"
  nohup tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  wait_port "Kafka (tansu)" 9092 30
}

case "${1:-all}" in
  nats) ensure_nats ;;
  rabbitmq) ensure_rabbitmq ;;
  kafka) ensure_kafka ;;
  all) ensure_nats; ensure_rabbitmq; ensure_kafka ;;
  *) echo "usage: $0 [nats|rabbitmq|kafka|all]" >&2; exit 2 ;;
esac
