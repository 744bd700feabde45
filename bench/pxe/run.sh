#!/usr/bin/env bash
# Boot-file serving throughput on loopback, LPMOS pxe side by side with the
# usual peers: our TFTP server vs tftpd-hpa (in.tftpd), and our HTTP
# FileServer vs nginx, on the same files with the same clients.
#
#   bench/pxe/run.sh            # from the module root; needs root for in.tftpd/nginx
#
# Knobs (environment): TFTP_RUNS fetches of the 20 MB file per cell (5, the median
# is shown),
# HTTP_PAR parallel HTTP clients (32), HTTP_ROUNDS fetches of the 30 MB
# initramfs per client (4), IMAGE_ROUNDS of the 500 MB sparse image (1),
# WRK_SECS seconds of wrk (5). Every loop is bounded by its count and every
# command by `timeout`; everything started here is killed on exit.
# Needs: go curl atftp tftp-hpa tftpd-hpa nginx(-light), optionally wrk:
#   apt-get install -y curl atftp tftp-hpa tftpd-hpa nginx-light ipxe wrk
set -euo pipefail
cd "$(dirname "$0")/../.."

TFTP_RUNS=${TFTP_RUNS:-5}
HTTP_PAR=${HTTP_PAR:-32}
HTTP_ROUNDS=${HTTP_ROUNDS:-4}
IMAGE_ROUNDS=${IMAGE_ROUNDS:-1}
WRK_SECS=${WRK_SECS:-5}
OURS_TFTP=127.0.0.1:16901 HPA_TFTP=127.0.0.1:16902
OURS_HTTP=127.0.0.1:16903 NGINX_HTTP=127.0.0.1:16904

for tool in go curl atftp tftp in.tftpd nginx; do
	command -v "$tool" >/dev/null || { echo "missing $tool (see the header of $0)" >&2; exit 1; }
done

W=$(mktemp -d /tmp/pxebench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# mbps BYTES START END
mbps() { awk -v b="$1" -v s="$2" -v e="$3" 'BEGIN { printf "%.1f", b / (e - s) / 1e6 }'; }

echo "== setup in $W ($(nproc) CPUs, $(go version | cut -d' ' -f3))"
mkdir -p "$W/tftp" "$W/http" "$W/out" "$W/nginx-tmp"
cp /usr/lib/ipxe/undionly.kpxe "$W/tftp/" 2>/dev/null || head -c 74213 /dev/urandom >"$W/tftp/undionly.kpxe"
head -c $((20 << 20)) /dev/urandom >"$W/tftp/big20.img"
head -c $((30 << 20)) /dev/urandom >"$W/http/initramfs.cpio.zst"
truncate -s 500M "$W/http/image.raw"
cp "$W/tftp/undionly.kpxe" "$W/http/"
chmod -R a+rX "$W"
go build -o "$W/pxebench" ./bench/pxe/server.go

"$W/pxebench" -tftp-root "$W/tftp" -tftp-addr "$OURS_TFTP" -http-root "$W/http" -http-addr "$OURS_HTTP" \
	2>"$W/pxebench.log" &
pids+=($!)
in.tftpd -L -u root -s "$W/tftp" -a "$HPA_TFTP" 2>"$W/tftpd.log" &
pids+=($!)
cat >"$W/nginx.conf" <<EOF
user root;
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
		listen $NGINX_HTTP;
		location /boot/files/ { alias $W/http/; }
	}
}
EOF
nginx -c "$W/nginx.conf" -p "$W" -g 'daemon off;' &
pids+=($!)

# Wait (bounded) until every server answers.
for _ in $(seq 50); do
	if curl -sf -o /dev/null "http://$OURS_HTTP/boot/files/undionly.kpxe" &&
		curl -sf -o /dev/null "http://$NGINX_HTTP/boot/files/undionly.kpxe" &&
		timeout 2 curl -sf -o /dev/null "tftp://$OURS_TFTP/undionly.kpxe" &&
		timeout 2 curl -sf -o /dev/null "tftp://$HPA_TFTP/undionly.kpxe"; then
		ready=1
		break
	fi
	sleep 0.2
done
[[ ${ready:-} == 1 ]] || { echo "servers did not start; logs:" >&2; cat "$W"/*.log >&2; exit 1; }

# tftp_fetch ADDR CLIENT...: one fetch of big20.img with the client (HOST,
# PORT and OUT are substituted); checks the bytes and prints the seconds.
tftp_fetch() {
	local addr=$1 host port args start end
	shift
	host=${addr%:*} port=${addr##*:}
	args=("${@//HOST/$host}")
	args=("${args[@]//PORT/$port}")
	args=("${args[@]//OUT/$W/out/tftp}")
	rm -f "$W/out/tftp"
	start=$(now)
	timeout 120 "${args[@]}" >/dev/null 2>&1 || { echo fail; return; }
	end=$(now)
	cmp -s "$W/out/tftp" "$W/tftp/big20.img" || { echo BAD; return; }
	awk -v s="$start" -v e="$end" 'BEGIN { printf "%.6f\n", e - s }'
}

# median_mbps BYTES SECONDS...: MB/s of the median time, or the first
# failure.
median_mbps() {
	local bytes=$1
	shift
	for t in "$@"; do [[ $t == fail || $t == BAD ]] && { printf "%s" "$t"; return; }; done
	printf "%s\n" "$@" | sort -g | awk -v b="$bytes" '{ t[NR] = $1 } END { printf "%.1f", b / t[int((NR + 1) / 2)] / 1e6 }'
}

# tftp_parallel ADDR N: N atftp clients at once (blksize 1468, windowsize
# 16), TFTP_RUNS fetches each; prints the aggregate MB/s.
tftp_parallel() {
	local addr=$1 n=$2 start end
	start=$(now)
	seq "$((n * TFTP_RUNS))" | timeout 300 xargs -P "$n" -I{} atftp --get -r big20.img -l "$W/out/par{}" \
		--option "blksize 1468" --option "windowsize 16" "${addr%:*}" "${addr##*:}" >/dev/null 2>&1 ||
		{ printf "%s" "fail"; return; }
	end=$(now)
	for f in "$W"/out/par*; do cmp -s "$f" "$W/tftp/big20.img" || { printf "%s" "BAD"; return; }; done
	rm -f "$W"/out/par*
	mbps $((n * TFTP_RUNS * (20 << 20))) "$start" "$end"
}

echo
echo "== TFTP: 20 MB file, median of $TFTP_RUNS fetches per cell (servers alternate), MB/s"
echo "   (tftpd-hpa does not implement windowsize: it leaves the option out of its OACK)"
printf "%-42s %12s %12s\n" "client" "lpmos pxe" "tftpd-hpa"
row() {
	local label=$1 ours=() hpa=()
	shift
	for _ in $(seq "$TFTP_RUNS"); do
		ours+=("$(tftp_fetch "$OURS_TFTP" "$@")")
		hpa+=("$(tftp_fetch "$HPA_TFTP" "$@")")
	done
	printf "%-42s %12s %12s\n" "$label" "$(median_mbps $((20 << 20)) "${ours[@]}")" "$(median_mbps $((20 << 20)) "${hpa[@]}")"
}
row "tftp-hpa client (blksize 512)" tftp -m binary HOST PORT -c get big20.img OUT
row "curl --tftp-blksize 1468" curl -sS --tftp-blksize 1468 -o OUT tftp://HOST:PORT/big20.img
row "atftp blksize 1468" atftp --get -r big20.img -l OUT --option "blksize 1468" HOST PORT
row "atftp blksize 1468 windowsize 4 (EDK2)" atftp --get -r big20.img -l OUT --option "blksize 1468" --option "windowsize 4" HOST PORT
row "atftp blksize 1468 windowsize 16" atftp --get -r big20.img -l OUT --option "blksize 1468" --option "windowsize 16" HOST PORT
row "atftp blksize 1468 windowsize 64" atftp --get -r big20.img -l OUT --option "blksize 1468" --option "windowsize 64" HOST PORT
printf "%-42s %12s %12s\n" "8 x atftp parallel (1468, windowsize 16)" "$(tftp_parallel "$OURS_TFTP" 8)" "$(tftp_parallel "$HPA_TFTP" 8)"

# http_cell ADDR FILE ROUNDS: HTTP_PAR parallel curls, ROUNDS fetches each;
# prints aggregate MB/s, after checking one download's bytes.
http_cell() {
	local addr=$1 file=$2 rounds=$3 start end total
	curl -sf -o "$W/out/http" "http://$addr/boot/files/$file"
	cmp -s "$W/out/http" "$W/http/$file" || { printf "%s" "BAD"; return; }
	rm -f "$W/out/http"
	start=$(now)
	total=$(seq "$((HTTP_PAR * rounds))" | timeout 600 xargs -P "$HTTP_PAR" -I{} \
		curl -sf -o /dev/null -w '%{size_download}\n' "http://$addr/boot/files/$file" |
		awk '{ s += $1 } END { printf "%.0f\n", s }') || { printf "%s" "fail"; return; }
	end=$(now)
	local size
	size=$(stat -c %s "$W/http/$file")
	[[ $total == $((size * HTTP_PAR * rounds)) ]] || { printf "short(%s)" "$total"; return; }
	mbps "$total" "$start" "$end"
}

echo
echo "== HTTP boot files: $HTTP_PAR parallel curl clients, aggregate MB/s"
printf "%-42s %12s %12s\n" "workload" "lpmos pxe" "nginx"
printf "%-42s %12s %12s\n" "30 MB initramfs x $HTTP_ROUNDS per client" \
	"$(http_cell "$OURS_HTTP" initramfs.cpio.zst "$HTTP_ROUNDS")" "$(http_cell "$NGINX_HTTP" initramfs.cpio.zst "$HTTP_ROUNDS")"
printf "%-42s %12s %12s\n" "500 MB sparse image x $IMAGE_ROUNDS per client" \
	"$(http_cell "$OURS_HTTP" image.raw "$IMAGE_ROUNDS")" "$(http_cell "$NGINX_HTTP" image.raw "$IMAGE_ROUNDS")"

if command -v wrk >/dev/null; then
	wrk_rps() {
		timeout $((WRK_SECS + 30)) wrk -t2 -c"$HTTP_PAR" -d"${WRK_SECS}s" "$1" 2>/dev/null |
			awk '/Requests\/sec/ { printf "%.0f", $2 } /Non-2xx/ { bad = 1 } END { if (bad) printf " (errors)" }'
	}
	wrk_rps_range() {
		timeout $((WRK_SECS + 30)) wrk -t2 -c"$HTTP_PAR" -d"${WRK_SECS}s" -H "Range: bytes=0-4095" "$1" 2>/dev/null |
			awk '/Requests\/sec/ { printf "%.0f", $2 }'
	}
	echo
	echo "== HTTP requests/s with wrk, $HTTP_PAR connections, ${WRK_SECS}s"
	printf "%-42s %12s %12s\n" "request" "lpmos pxe" "nginx"
	printf "%-42s %12s %12s\n" "GET undionly.kpxe (74 KB)" \
		"$(wrk_rps "http://$OURS_HTTP/boot/files/undionly.kpxe")" "$(wrk_rps "http://$NGINX_HTTP/boot/files/undionly.kpxe")"
	printf "%-42s %12s %12s\n" "GET image.raw Range: bytes=0-4095" \
		"$(wrk_rps_range "http://$OURS_HTTP/boot/files/image.raw")" "$(wrk_rps_range "http://$NGINX_HTTP/boot/files/image.raw")"
fi

if [[ -s $W/pxebench.log ]]; then
	echo
	echo "== lpmos pxe warnings"
	head -20 "$W/pxebench.log"
fi
