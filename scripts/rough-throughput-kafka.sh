#!/usr/bin/env bash
set -u
# A rough catch-up throughput check of the Kafka sink until the benchmark program of issue 7
# exists. Starts its own tansu broker (in memory) on 127.0.0.1:19092 so the shared test broker
# does not keep 900 MB; the release emulator pre-publishes 200,000 generated events; the relay
# (Kafka sink only, 3 partitions per topic) starts from "oldest"; the script prints how long
# the sink took to have all 199,466 events (the default topics) and the relay's peak RSS.
# Needs tansu (scripts/services.sh kafka installs it); works in /tmp/kperf.
# Usage: cargo build --release -p nomad-relay -p nomad-emulator
#        scripts/rough-throughput-kafka.sh [RELAY_BINARY]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RELAY=${1:-$ROOT/target/release/nomad-relay}
cd /tmp && rm -rf kperf && mkdir kperf && cd kperf
tansu broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ > tansu.log 2>&1 &
TP=$!
$ROOT/target/release/nomad-emulator --listen 127.0.0.1:14647 --rate 0 --total 200000 --buffer-size 1000000 2>emu.log &
EP=$!
sleep 8
cat > relay.toml <<'TOML'
data_dir = "./data"
[nomad]
address = "http://127.0.0.1:14647"
[sinks.k]
type = "kafka"
brokers = "127.0.0.1:19092"
topic = "perf.{{Topic}}"
create_topics = { partitions = 3, replication = 1 }
TOML
$RELAY run --config relay.toml 2>relay.log & RP=$!
start=$(date +%s.%N); peak=0
for i in $(seq 1 1200); do
  sleep 0.25
  rss=$(ps -o rss= -p $RP); [ "${rss:-0}" -gt "$peak" ] && peak=$rss
  n=$(python3 -c "import json;print(json.load(open('data/cursors/k.json'))['next_seq']-1)" 2>/dev/null || echo 0)
  if [ "$n" -ge 199466 ]; then echo "kafka: 199466 events in $(echo "$(date +%s.%N) - $start" | bc)s, peak RSS ${peak} KiB"; break; fi
done
echo "cursor at $n"
kill $RP; wait $RP; kill $EP $TP; wait 2>/dev/null
