#!/usr/bin/env bash
# Soak (issue 15, RELIABILITY.md §5): runs the `soak` scenario (agent-doppler-1sub at half its max
# lossless rate for 30 minutes), samples the loadgen process's VmRSS/VmHWM every 30 s (the pipeline
# runs inside it), then prints RSS at 1, 5, 10, 20, 30 min and the worst latency per 5-minute window
# from the loadgen's per-second progress lines.
#
#   benches/soak.sh [loadgen flags...]      e.g. --duration 1200 to shorten it
#   OUT=/tmp/soak-run benches/soak.sh       (log: $OUT.log, samples: $OUT.csv)
set -euo pipefail
bin=${LOADGEN:-target/release/loadgen}
out=${OUT:-/tmp/soak-$(date -u +%Y%m%dT%H%M%S)}
log=$out.log csv=$out.csv

"$bin" --scenario soak "$@" >"$log" 2>&1 &
pid=$!
start=$(date +%s)
echo "loadgen pid $pid, log $log, samples $csv" >&2
echo "t_s,vmrss_kib,vmhwm_kib" >"$csv"
while kill -0 "$pid" 2>/dev/null; do
    awk -v t=$(( $(date +%s) - start )) '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {if (r) print t "," r "," h}' \
        "/proc/$pid/status" >>"$csv" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null && sleep 1; done
done
wait "$pid" && rc=0 || rc=$?

tail -n 40 "$log"
echo "--- loadgen exit $rc; RSS (sample nearest each minute mark; MiB)"
awk -F, 'NR > 1 { t[NR] = $1; r[NR] = $2; h[NR] = $3; n = NR }
    END { split("1 5 10 20 30", m, " ")
          for (i = 1; i <= 5; i++) { best = 0
              for (j = 2; j <= n; j++) if (!best || (t[j] - m[i]*60)^2 < (t[best] - m[i]*60)^2) best = j
              printf "%2d min (t=%4ds): VmRSS %6.1f  VmHWM %6.1f\n", m[i], t[best], r[best]/1024, h[best]/1024 }
          printf "last   (t=%4ds): VmRSS %6.1f  VmHWM %6.1f\n", t[n], r[n]/1024, h[n]/1024 }' "$csv"
echo "--- worst latency per 5-minute window (from the per-second lines)"
sed -nE 's/^\[[^ ]+ +([0-9.]+)s\].*worst latency ([0-9.]+) ms.*/\1 \2/p' "$log" |
    awk '{ w = int($1 / 300); if ($2 > max[w]) max[w] = $2; if (w > n) n = w }
         END { for (w = 0; w <= n; w++) printf "%2d-%2d min: %8.1f ms\n", w*5, w*5+5, max[w] }'
exit "$rc"
