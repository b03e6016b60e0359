#!/usr/bin/env bash
# The broker's CPU per record through its Kafka listener and through its native one, for the
# same records and batches (docs/performance.md, "Kafka listener vs native listener: broker CPU
# per record").
#
# Starts one release `strom serve --listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0` as a process
# of its own and, in rounds that alternate the order (Kafka, paced native, native; then native,
# Kafka, paced native; ...), measures the broker's CPU time (utime + stime of /proc/PID/stat)
# from just before to just after each load process:
#   produce  a fresh 1-partition topic per run, RECORDS records of RECORD_BYTES bytes written by
#            librdkafka (benches/kafka_load.rs) to the Kafka listener, or by `strom bench produce`
#            to the native one; same batch.size, linger, acks=1, no keys, no compression;
#   consume  one topic filled once (by `strom bench produce`, untimed), read whole from its
#            beginning by librdkafka, or by `strom bench consume`, each run.
# Every run is one JSON line in $OUT; a summary (medians, all runs, ratios Kafka / native)
# follows on stdout. WARMUP rounds of each phase run first and are not recorded. Each produce
# topic is deleted after its run (KEEP_TOPICS=0): its pages go back to the free pool and the
# next run reuses them. Keeping them (KEEP_TOPICS=1, needs RECORDS x (RECORD_BYTES + ~10) x 3 x
# (RUNS + WARMUP) bytes free) makes the first runs take never-touched memory, which this VM's
# hypervisor supplies slowly (docs/performance.md, "This machine's memory"): those runs cost up
# to 3x the broker CPU.
#
# Usage: benches/kafka_vs_native.sh [produce|consume|both]
# Environment (defaults): RECORDS (20000000), RECORD_BYTES (100), RUNS (7 rounds),
#   WARMUP (1 round), KEEP_TOPICS (0), PACED (1: also run the native load paced to the rate the
#   Kafka run just reached, `strom bench produce|consume --rate`, listener "native-paced"; 0: off),
#   BATCH_BYTES (262144), LINGER_MS (5), DATA_PARENT (/tmp), OUT (/tmp/kafka-vs-native-DATE.jsonl),
#   STROM (target/release/strom), KAFKA_LOAD (built with `cargo bench --bench kafka_load
#   --no-run`), SETTLE_S (2: pause after sync before each run).
#
# Build first: cargo build --release --bin strom
set -euo pipefail

cd "$(dirname "$0")/.."
WHAT=${1:-both}
RECORDS=${RECORDS:-20000000}
RECORD_BYTES=${RECORD_BYTES:-100}
RUNS=${RUNS:-7}
WARMUP=${WARMUP:-1}
KEEP_TOPICS=${KEEP_TOPICS:-0}
PACED=${PACED:-1}
BATCH_BYTES=${BATCH_BYTES:-262144}
LINGER_MS=${LINGER_MS:-5}
DATA_PARENT=${DATA_PARENT:-/tmp}
OUT=${OUT:-/tmp/kafka-vs-native-$(date +%Y%m%d-%H%M%S).jsonl}
STROM=${STROM:-target/release/strom}
SETTLE_S=${SETTLE_S:-2}

case $WHAT in produce | consume | both) ;; *)
    echo "usage: $0 [produce|consume|both]" >&2
    exit 2
    ;;
esac
[[ -x $STROM ]] || {
    echo "no $STROM: cargo build --release --bin strom" >&2
    exit 1
}
if [[ -z ${KAFKA_LOAD:-} ]]; then
    KAFKA_LOAD=$(cargo bench --bench kafka_load --no-run 2>&1 |
        sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
fi
[[ -x $KAFKA_LOAD ]] || {
    echo "cannot find the kafka_load bench binary ($KAFKA_LOAD)" >&2
    exit 1
}
TCK=$(getconf CLK_TCK)

DIR=$(mktemp -d "$DATA_PARENT/kafka-vs-native.XXXXXX")
BROKER=
cleanup() {
    if [[ -n $BROKER ]]; then
        kill "$BROKER" 2>/dev/null || true
        wait "$BROKER" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

"$STROM" serve --listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0 --data-dir "$DIR/data" \
    >"$DIR/serve.out" 2>"$DIR/serve.log" &
BROKER=$!
for _ in $(seq 100); do
    grep -q '^kafka listening on' "$DIR/serve.out" 2>/dev/null && break
    sleep 0.1
done
NATIVE=$(awk '/^listening on/ {print $3}' "$DIR/serve.out")
KAFKA=$(awk '/^kafka listening on/ {print $4}' "$DIR/serve.out")
[[ -n $NATIVE && -n $KAFKA ]] || {
    echo "the broker did not start:" >&2
    cat "$DIR/serve.log" >&2
    exit 1
}
echo "broker pid $BROKER: native $NATIVE, kafka $KAFKA; runs in $OUT" >&2

# utime and stime of the broker, in clock ticks (fields 14 and 15; the name field may hold
# spaces, so count from the closing parenthesis).
ticks() { sed 's/.*) //' "/proc/$BROKER/stat" | awk '{print $12, $13}'; }

# Batches and records in a topic's stored segments (RecordBatch v2 headers: length at 8, record
# count at 57).
batches() {
    python3 - "$DIR/data/$1-0" <<'EOF'
import os, struct, sys
d = sys.argv[1]; batches = records = 0
for name in sorted(os.listdir(d)):
    if not name.endswith(".log"):
        continue
    with open(os.path.join(d, name), "rb") as f:
        while True:
            h = f.read(61)
            if len(h) < 61:
                break
            length = struct.unpack(">i", h[8:12])[0]
            batches += 1
            records += struct.unpack(">i", h[57:61])[0]
            f.seek(length + 12 - 61, 1)
print(batches, records)
EOF
}

settle() {
    sync
    sleep "$SETTLE_S"
}

# run PHASE LISTENER RUN TOPIC: one measured load; appends a JSON line to $OUT (run 0 and
# below: a warm-up, not recorded). LISTENER native-paced: the native load at $KAFKA_RATE.
KAFKA_RATE=
run() {
    local phase=$1 listener=$2 i=$3 topic=$4 load pace=()
    settle
    if [[ $listener == native-paced ]]; then
        pace=(--rate "$KAFKA_RATE")
    fi
    read -r u0 s0 < <(ticks)
    if [[ $listener == kafka ]]; then
        load=$("$KAFKA_LOAD" --bootstrap "$KAFKA" --topic "$topic" --mode "$phase" \
            --records "$RECORDS" --record-bytes "$RECORD_BYTES" --batch-bytes "$BATCH_BYTES" \
            --linger-ms "$LINGER_MS" --broker-pid "$BROKER")
    elif [[ $phase == produce ]]; then
        load=$("$STROM" bench produce --bootstrap "$NATIVE" --topic "$topic" --partitions 1 \
            --records "$RECORDS" --record-size "$RECORD_BYTES" --batch-size "$BATCH_BYTES" \
            --linger-ms "$LINGER_MS" --broker-pid "$BROKER" --output json "${pace[@]}")
    else
        load=$("$STROM" bench consume --bootstrap "$NATIVE" --topic "$topic" \
            --records "$RECORDS" --broker-pid "$BROKER" --output json "${pace[@]}")
    fi
    read -r u1 s1 < <(ticks)
    if [[ $listener == kafka ]]; then
        KAFKA_RATE=$(jq -r '.records_per_sec | floor' <<<"$load")
    fi
    local nb=null nr=null
    if [[ $phase == produce ]]; then
        read -r nb nr < <(batches "$topic")
    fi
    jq -cn --arg phase "$phase" --arg listener "$listener" --argjson run "$i" \
        --argjson records "$RECORDS" --argjson record_bytes "$RECORD_BYTES" \
        --argjson tck "$TCK" --argjson u "$((u1 - u0))" --argjson s "$((s1 - s0))" \
        --argjson batches "$nb" --argjson stored "$nr" --argjson load "$load" '{
            phase: $phase, listener: $listener, run: $run, records: $records,
            record_bytes: $record_bytes,
            broker_user_s: ($u / $tck), broker_system_s: ($s / $tck),
            broker_cpu_s: (($u + $s) / $tck),
            ns_per_record: (($u + $s) / $tck * 1e9 / $records),
            load_elapsed_s: $load.elapsed_s, load_records_per_sec: $load.records_per_sec,
            batches: $batches, stored_records: $stored,
            records_per_batch: (if $batches then $stored / $batches else null end),
            load: $load
        }' | if ((i > 0)); then tee -a "$OUT"; else cat; fi | jq -c '{phase, listener, run, ns_per_record, broker_user_s,
            broker_system_s, load_records_per_sec, records_per_batch}' >&2
}

order() { # kafka first in odd runs, native first in even ones; paced right after kafka
    local p=
    ((PACED)) && p=native-paced
    if (($1 % 2)); then echo kafka $p native; else echo native kafka $p; fi
}

if [[ $WHAT != consume ]]; then
    for i in $(seq $((1 - WARMUP)) "$RUNS"); do
        for listener in $(order "$i"); do
            topic=kvn-produce-$listener-$i
            "$STROM" topics create "$topic" --partitions 1 --bootstrap "$NATIVE" >/dev/null
            run produce "$listener" "$i" "$topic"
            if ((KEEP_TOPICS == 0)); then
                "$STROM" topics delete "$topic" --bootstrap "$NATIVE" >/dev/null
            fi
        done
    done
fi

if [[ $WHAT != produce ]]; then
    topic=kvn-consume
    "$STROM" bench produce --bootstrap "$NATIVE" --topic "$topic" --partitions 1 \
        --records "$RECORDS" --record-size "$RECORD_BYTES" --batch-size "$BATCH_BYTES" \
        --linger-ms "$LINGER_MS" --output json >/dev/null
    for i in $(seq $((1 - WARMUP)) "$RUNS"); do
        for listener in $(order "$i"); do
            run consume "$listener" "$i" "$topic"
        done
    done
fi

python3 - "$OUT" "$RECORD_BYTES" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
size = int(sys.argv[2])
for phase in ("produce", "consume"):
    r = [x for x in rows if x["phase"] == phase and x["record_bytes"] == size]
    if not r:
        continue
    print(f"{phase}, {size} B records, {r[0]['records']} records per run:")
    med = {}
    for listener in ("kafka", "native", "native-paced"):
        v = [x["ns_per_record"] for x in r if x["listener"] == listener]
        if not v:
            continue
        rate = [x["load_records_per_sec"] / 1e6 for x in r if x["listener"] == listener]
        med[listener] = statistics.median(v)
        n = r[0]["records"]
        user = statistics.median(x["broker_user_s"] * 1e9 / n for x in r if x["listener"] == listener)
        system = statistics.median(x["broker_system_s"] * 1e9 / n for x in r if x["listener"] == listener)
        print(f"  {listener:12}  broker CPU {med[listener]:6.1f} ns/record (median; runs "
              + ", ".join(f"{x:.1f}" for x in v) + f"; user {user:.1f}, system {system:.1f})  load "
              + ", ".join(f"{x:.2f}" for x in rate) + " M records/s")
    pairs = {}
    for x in r:
        pairs.setdefault(x["run"], {})[x["listener"]] = x["ns_per_record"]
    for other in ("native", "native-paced"):
        if other not in med:
            continue
        ratios = [p["kafka"] / p[other] for p in pairs.values() if "kafka" in p and other in p]
        print(f"  kafka / {other}: {med['kafka'] / med[other]:.3f} (medians); per round "
              + ", ".join(f"{x:.3f}" for x in ratios))
EOF
