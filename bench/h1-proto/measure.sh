#!/usr/bin/env bash
# Instructions per request of the h1-proto prototype next to nginx and hyper-min (and sekisho
# when its binary is given), in one session, with the bench harness's instr.sh.
#
# instr.sh knows built-in targets only, so the prototype is measured in hyper-min's slot:
# instr.sh starts `$HYPER_MIN_BIN` with LISTEN=127.0.0.1:18089 UPSTREAM=127.0.0.1:18080, which
# is how h1-proto reads its addresses too. Four instr.sh runs, one after the other:
#   1. anchors: nginx, hyper-min (the real one), sekisho (with --sekisho)
#   2. h1-proto in hyper-min's slot (reads timed by one ticking timer per connection)
#   3. h1-proto with H1_TIMERS=per-wait (a tokio timeout around each read that blocks)
#   4. nginx again (brackets the session: it should repeat within ~1 %)
# then one merged table, summary.md, with ratios to nginx and to hyper-min.
#
# Usage: bench/h1-proto/measure.sh [-r R] [-n N] [-c K] [--sekisho PATH] [-o DIR]
#   -r R            measurements per target (default 3)
#   -n N, -c K      requests per measurement, keep-alive connections (instr.sh's defaults)
#   --sekisho PATH  also measure this sekisho binary (today's path) in run 1
#   -o DIR          output directory (default /tmp/sekisho-bench/h1proto/<timestamp>)
# Environment: BENCH (the harness, default <repo>/../shared/bench), CARGO_TARGET_DIR
#   (default /var/tmp/h1proto-target). Needs the harness's setup.sh done once
#   (SKIP_PINGORA=1 bash "$BENCH/setup.sh").
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${BENCH:-$(cd "$HERE/../../.." && pwd)/shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/h1proto-target}
REPS=3
EXTRA=()
SEKISHO=""
OUT=/tmp/sekisho-bench/h1proto/$(date +%Y%m%d-%H%M%S)

while [ $# -gt 0 ]; do
  case "$1" in
    -r) REPS=$2; shift 2 ;;
    -n|-c) EXTRA+=("$1" "$2"); shift 2 ;;
    --sekisho) SEKISHO=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ -x "$BENCH/instr.sh" ] || { echo "bench harness not found at $BENCH (set BENCH)" >&2; exit 2; }
mkdir -p "$OUT"

echo "== building h1-proto (release) into $CARGO_TARGET_DIR"
cargo build --release --manifest-path "$HERE/Cargo.toml"
PROTO=$CARGO_TARGET_DIR/release/h1-proto

anchors=nginx,hyper-min
sekisho_args=()
if [ -n "$SEKISHO" ]; then
  anchors+=,sekisho
  sekisho_args=(--sekisho "$SEKISHO")
fi

echo "== 1/4 anchors: $anchors"
"$BENCH/instr.sh" -t "$anchors" -r "$REPS" "${EXTRA[@]}" "${sekisho_args[@]}" -o "$OUT/1-anchors"
echo "== 2/4 h1-proto (in hyper-min's slot: $PROTO)"
H1_TIMERS=ticks HYPER_MIN_BIN=$PROTO "$BENCH/instr.sh" -t hyper-min -r "$REPS" "${EXTRA[@]}" -o "$OUT/2-h1-proto"
echo "== 3/4 h1-proto, H1_TIMERS=per-wait"
H1_TIMERS=per-wait HYPER_MIN_BIN=$PROTO "$BENCH/instr.sh" -t hyper-min -r "$REPS" "${EXTRA[@]}" -o "$OUT/3-h1-proto-per-wait"
echo "== 4/4 nginx again"
"$BENCH/instr.sh" -t nginx -r "$REPS" "${EXTRA[@]}" -o "$OUT/4-nginx"

python3 - "$OUT" > "$OUT/summary.md" <<'PY'
import csv, statistics, sys
out = sys.argv[1]
runs = [("1-anchors", None), ("2-h1-proto", "h1-proto"), ("3-h1-proto-per-wait", "h1-proto (per-wait timers)"),
        ("4-nginx", "nginx (again)")]
rows = {}
order = []
for folder, rename in runs:
    with open(f"{out}/{folder}/results.csv") as f:
        for r in csv.DictReader(f):
            name = rename if rename and r["target"] in ("hyper-min", "nginx") else r["target"]
            if name not in rows:
                order.append(name)
            rows.setdefault(name, []).append(r)
def med(name, key):
    return statistics.median(float(r[key]) / float(r["requests"]) for r in rows[name])
nginx, hyper = med("nginx", "ir"), med("hyper-min", "ir")
print("| target | Ir/request median (min–max) | vs nginx | vs hyper-min | syscalls/request | clock reads/request |")
print("|---|---|---:|---:|---:|---:|")
for name in order:
    irs = [float(r["ir"]) / float(r["requests"]) for r in rows[name]]
    ir = statistics.median(irs)
    print(f"| {name} | {ir:,.0f} ({min(irs):,.0f}–{max(irs):,.0f}) | {ir / nginx:.2f} | {ir / hyper:.2f} "
          f"| {med(name, 'syscalls'):.2f} | {med(name, 'clock_reads'):.2f} |")
print()
print("System calls per request by function (first measurement):")
print()
for name in order:
    r = rows[name][0]
    n = float(r["requests"])
    calls = sorted(((k, int(v) / n) for k, v in (p.split("=") for p in r["syscalls_by_function"].split())),
                   key=lambda kv: -kv[1])
    print(f"* {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in calls if v >= 0.01))
print()
print(f"Runs: {out}/1-anchors, {out}/2-h1-proto and {out}/3-h1-proto-per-wait (h1-proto in hyper-min's slot), "
      f"{out}/4-nginx; "
      "dumps in each run's callgrind/ (callgrind_annotate --threshold=100 FILE).")
PY
cat "$OUT/summary.md"
