#!/usr/bin/env bash
# A rough catch-up throughput check until the benchmark program of issue 7 exists.
# The release emulator pre-publishes 200,000 generated events into a buffer that keeps them
# all; the relay (file sink and NATS JetStream sink at once) then starts from "oldest", and
# the script prints how long each sink took to have all 199,466 events (the default topics).
# Needs NATS on 127.0.0.1:4222 (scripts/services.sh nats); works in /tmp/perf.
# Usage: cargo build --release -p nomad-relay -p nomad-emulator
#        scripts/rough-throughput.sh [RELAY_BINARY]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RELAY=${1:-$ROOT/target/release/nomad-relay}
python3 - <<'PY'
import socket, json
s=socket.create_connection(("127.0.0.1",4222)); f=s.makefile('rb'); f.readline()
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.x 1\r\n')
def req(subj, payload=b''):
    s.sendall(b'PUB %s _INBOX.x %d\r\n%s\r\n' % (subj.encode(), len(payload), payload))
    while True:
        line=f.readline()
        if line.startswith(b'MSG'):
            n=int(line.split()[-1]); data=f.read(n); f.readline(); return json.loads(data)
        if line.startswith(b'PING'): s.sendall(b'PONG\r\n')
# A previous run's stream would make every event a duplicate.
for n in (req("$JS.API.STREAM.NAMES").get("streams") or []):
    if n=="PERF": req("$JS.API.STREAM.DELETE."+n)
PY
cd /tmp && rm -rf perf && mkdir perf && cd perf
$ROOT/target/release/nomad-emulator --listen 127.0.0.1:14646 --rate 0 --total 200000 --buffer-size 1000000 2>emu.log &
EP=$!
sleep 8
cat > relay.toml <<'TOML'
data_dir = "./data"
[nomad]
address = "http://127.0.0.1:14646"
[sinks.out]
type = "file"
path = "./events.ndjson"
[sinks.js]
type = "nats"
subject = "perf.{{Topic}}.{{Type}}"
stream = "PERF"
create_stream = true
TOML
$RELAY run --config relay.toml 2>relay.log & RP=$!
start=$(date +%s.%N); fdone=""
for i in $(seq 1 200); do
  sleep 0.25
  f=$(wc -l < events.ndjson 2>/dev/null || echo 0)
  n=$(python3 -c "import json;print(json.load(open('data/cursors/js.json'))['next_seq']-1)" 2>/dev/null || echo 0)
  now=$(date +%s.%N)
  if [ -z "$fdone" ] && [ "$f" -ge 199466 ]; then fdone=$(echo "$now - $start" | bc); fi
  if [ "$n" -ge 199466 ]; then echo "file ${fdone}s nats $(echo "$now - $start" | bc)s"; break; fi
done
kill $RP; wait $RP; kill $EP; wait $EP 2>/dev/null
# Leave no 900 MB stream behind on the shared server.
python3 - <<'PY'
import socket
s=socket.create_connection(("127.0.0.1",4222)); s.makefile('rb').readline()
s.sendall(b'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.PERF 0\r\n\r\nPING\r\n')
PY
