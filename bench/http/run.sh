#!/usr/bin/env bash
# Small HTTP requests on loopback: wrk against nginx serving a small static
# file, against our region's iPXE script for a machine with a task (served
# from the region's view and token cache), and against a static file of the
# same size from our region's boot directory, and against an agent API call
# (the approval poll, with the agent's token); req/s and p99 side by side,
# the same run, the cells alternating.
#
#   bench/http/run.sh           # from the module root
#
# Knobs (environment): CONNS wrk connections (64), THREADS wrk threads (2),
# SECS seconds per cell (5), RUNS rounds of the three cells (3),
# PROFILE=FILE also writes a CPU profile of the region under wrk on the
# script (PROFILE_SECS, default 5), read it with `go tool pprof -top FILE`.
# The region's script fetch limits and its connection cap per source are
# raised explicitly by its benchmark server (bench/http/server.go): wrk is
# one address with CONNS connections. Every wrk run is bounded by -d and
# `timeout`; everything started here is killed on exit.
# Needs: go curl nginx(-light) wrk:
#   apt-get install -y curl nginx-light wrk
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
SECS=${SECS:-5}
RUNS=${RUNS:-3}
PROFILE=${PROFILE:-}
PROFILE_SECS=${PROFILE_SECS:-5}
OURS=127.0.0.1:16911 NGINX=127.0.0.1:16912 PPROF=127.0.0.1:16913 FLOOR=127.0.0.1:16914
MAC=52:54:00:be:0c:01

for tool in go curl nginx wrk; do
	command -v "$tool" >/dev/null || { echo "missing $tool (see the header of $0)" >&2; exit 1; }
done
if [[ -n $PROFILE ]]; then PROFILE=$(realpath -m "$PROFILE"); fi

W=$(mktemp -d /tmp/httpbench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== setup in $W ($(nproc) CPUs, $(go version | cut -d' ' -f3), $(nginx -v 2>&1 | cut -d' ' -f3))"
mkdir -p "$W/boot" "$W/out" "$W/www" "$W/nginx-tmp"
go build -o "$W/httpbench" ./bench/http/server.go
"$W/httpbench" -addr "$OURS" -pprof "$PPROF" -floor "$FLOOR" -boot-dir "$W/boot" -out "$W/out" -mac "$MAC" \
	-conns-per-source $((CONNS + 16)) 2>"$W/region.log" &
region_pid=$!
pids+=($region_pid)

for _ in $(seq 150); do
	[[ -e $W/out/ready ]] && break
	sleep 0.2
done
[[ -e $W/out/ready ]] || { echo "the region did not start; log:" >&2; cat "$W/region.log" >&2; exit 1; }
cp "$W/out/script.ipxe" "$W/www/script.ipxe"
chmod -R a+rX "$W"

cat >"$W/nginx.conf" <<EOF
worker_processes auto;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	default_type application/octet-stream;
	client_body_temp_path $W/nginx-tmp/body;
	proxy_temp_path $W/nginx-tmp/proxy;
	fastcgi_temp_path $W/nginx-tmp/fastcgi;
	uwsgi_temp_path $W/nginx-tmp/uwsgi;
	scgi_temp_path $W/nginx-tmp/scgi;
	server {
		listen $NGINX;
		location /boot/files/ { alias $W/www/; }
	}
}
EOF
[[ $(id -u) == 0 ]] && sed -i '1i user root;' "$W/nginx.conf"
nginx -c "$W/nginx.conf" -p "$W" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)

SCRIPT_URL="http://$OURS/boot/$MAC.ipxe?platform=pcbios"
FILE_URL="http://$OURS/boot/files/script.ipxe"
NGINX_URL="http://$NGINX/boot/files/script.ipxe"
FLOOR_URL="http://$FLOOR/"
for _ in $(seq 50); do
	curl -sf -o "$W/out/nginx.ipxe" "$NGINX_URL" && break
	sleep 0.2
done
for u in "$NGINX_URL" "$SCRIPT_URL" "$FILE_URL" "$FLOOR_URL"; do
	curl -sf -o "$W/out/check" "$u" || { echo "no answer from $u" >&2; cat "$W"/*.log >&2; exit 1; }
	cmp -s "$W/out/check" "$W/out/script.ipxe" || { echo "$u answers other bytes than the script" >&2; exit 1; }
done
size=$(stat -c %s "$W/out/script.ipxe")
# An agent API call: the approval poll of the machine's agent (its task
# awaits approval; ?wait=0 answers at once), with the agent's token.
AGENT_URL="http://$OURS/api/v1/agent/approval/$MAC?wait=0"
AGENT_AUTH="Authorization: Bearer $(cat "$W/out/token")"
curl -sf -H "$AGENT_AUTH" -o "$W/out/approval.json" "$AGENT_URL" || { echo "no answer from $AGENT_URL" >&2; cat "$W"/*.log >&2; exit 1; }
grep -q '"approved":false' "$W/out/approval.json" || { echo "unexpected approval answer: $(cat "$W/out/approval.json")" >&2; exit 1; }

# ticks PID...: CPU clock ticks (user + system) the processes used so far.
ticks() {
	local t=0 p f
	for p in "$@"; do
		f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		f=${f##*) } # the fields after the command name
		t=$((t + $(awk '{ print $12 + $13 }' <<<"$f")))
	done
	echo "$t"
}
HZ=$(getconf CLK_TCK)

# cell URL PID...: one wrk run against URL served by the processes PID...
# (with the header $HDR when set);
# prints "req/s p99 cpu" (p99 latency in ms; cpu: the server's CPU time
# per request in µs, which the other jobs on the machine disturb less than
# req/s), or "fail", with " (N non-2xx)" when some answers were not 2xx.
cell() {
	local url=$1 out t0 t1
	shift
	t0=$(ticks "$@")
	out=$(timeout $((SECS + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency ${HDR:+-H "$HDR"} "$url" 2>&1) || { echo "fail"; return; }
	t1=$(ticks "$@")
	awk -v cpu=$((t1 - t0)) -v hz="$HZ" '
		function ms(v) {
			if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
			if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
			if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
			return v
		}
		/requests in/ { n = $1 }
		/Requests\/sec/ { rps = $2 }
		$1 == "99%" { p99 = ms($2) }
		/Non-2xx/ { bad = $NF }
		END {
			printf "%.0f %.1f %.0f", rps, p99, (n > 0 ? cpu / hz / n * 1e6 : 0)
			if (bad) printf " (%s non-2xx)", bad
		}' <<<"$out"
}

nginx_pids() { echo "$nginx_pid" $(pgrep -P "$nginx_pid"); }

echo
echo "== $CONNS connections, $THREADS wrk threads, ${SECS}s per cell, $size-byte body (the script's size)"
echo "   each cell: req/s, p99 latency ms, server CPU µs per request; the floor is a bare net/http"
echo "   handler writing the same bytes from memory (no routing, metrics or trace): Go's HTTP server alone"
printf "%-4s %-18s %-22s %-22s %-20s %-22s %s\n" "run" "nginx static file" "lpmos script (view)" "lpmos boot file" "Go net/http floor" "lpmos agent call" "script/nginx req/s, CPU"
for run in $(seq "$RUNS"); do
	n=$(cell "$NGINX_URL" $(nginx_pids))
	s=$(cell "$SCRIPT_URL" "$region_pid")
	f=$(cell "$FILE_URL" "$region_pid")
	b=$(cell "$FLOOR_URL" "$region_pid")
	a=$(HDR=$AGENT_AUTH cell "$AGENT_URL" "$region_pid")
	ratio=$(awk -v s="$s" -v n="$n" 'BEGIN { split(s, a, " "); split(n, b, " ")
		if (b[1] > 0 && a[3] > 0) printf "%.2f, %.2f", a[1] / b[1], b[3] / a[3]; else print "-" }')
	printf "%-4s %-18s %-22s %-22s %-20s %-22s %s\n" "$run" "$n" "$s" "$f" "$b" "$a" "$ratio"
done

if [[ -n $PROFILE ]]; then
	echo
	echo "== CPU profile of the region under wrk on the script (${PROFILE_SECS}s) -> $PROFILE"
	timeout $((PROFILE_SECS + 30)) wrk -t"$THREADS" -c"$CONNS" -d"$((PROFILE_SECS + 2))s" "$SCRIPT_URL" >/dev/null 2>&1 &
	wrkpid=$!
	pids+=($wrkpid)
	sleep 1
	curl -sf -o "$PROFILE" "http://$PPROF/debug/pprof/profile?seconds=$PROFILE_SECS"
	wait "$wrkpid" || true
	go tool pprof -top -nodecount=25 "$W/httpbench" "$PROFILE" 2>/dev/null | head -32
fi

if grep -qE 'level=(WARN|ERROR)' "$W/region.log"; then
	echo
	echo "== region warnings"
	grep -E 'level=(WARN|ERROR)' "$W/region.log" | head -20
fi
