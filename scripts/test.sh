#!/usr/bin/env bash
# Runs every LPMOS test on a fresh Debian machine: installs what the tests
# need, checks formatting and vet, runs all tests (race detector on) and a
# one-iteration pass over every benchmark so they cannot rot, and every
# fuzz target for a few seconds.
# Needs root for apt-get (and, in later suites, network namespaces and QEMU).
# Nothing is skipped: a test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Debian packages the tests use (one per line in scripts/test-packages.txt).
mapfile -t pkgs < <(grep -v '^\s*#' scripts/test-packages.txt | grep -v '^\s*$' || true)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
	# Only promtool is wanted from the prometheus package: a Prometheus
	# server started by systemd would hold port 9090 and scrape for ever.
	if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
		systemctl disable --now prometheus.service >/dev/null 2>&1 || true
	fi
	# Only `haproxy -c` is wanted: no load balancer on this machine.
	if [[ " ${missing[*]} " == *" haproxy "* ]] && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
		systemctl disable --now haproxy.service >/dev/null 2>&1 || true
	fi
	# Only `cloud-init schema` is wanted: cloud-init must not configure
	# this machine on its next boot.
	if [[ " ${missing[*]} " == *" cloud-init "* ]]; then
		mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
	fi
fi

command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
log "$(go version)"

log "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
	echo "gofmt needed:"; echo "$unformatted"; exit 1
fi

log "go mod tidy (no drift)"
go mod tidy -diff

log "go vet"
go vet ./...

log "go test (race)"
go test -race -count=1 -timeout 25m ./...

log "benchmarks (one iteration each, as a smoke test)"
# Quiet when they pass; a failure prints the output (it used to vanish
# into /dev/null, leaving only the exit status).
if ! out=$(go test -run '^$' -bench . -benchtime 1x -timeout 10m ./... 2>&1); then
	echo "$out" | grep -v '^Benchmark'
	exit 1
fi

# Each fuzz target runs a fixed number of inputs (FUZZTIME, default
# 20000x: 3 to 30 s each here) on top of its seeds and its corpus under
# testdata/fuzz. A count, not a duration: Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" when a -fuzztime
# duration ends while a worker is busy (go.dev/issue/75804, fixed in Go
# 1.27), and a count has no deadline to race. go test -fuzz takes one
# package and one target at a time.
fuzztime=${FUZZTIME:-20000x}
log "fuzz targets (${fuzztime} each)"
mapfile -t fuzzdirs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u)
for dir in "${fuzzdirs[@]}"; do
	list=$(go test -list '^Fuzz' "$dir")
	for target in $(grep '^Fuzz' <<<"$list"); do
		echo "$dir $target"
		# A failure prints the failing input and where it was saved under
		# testdata/fuzz (commit it with the fix).
		if ! out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$dir" 2>&1); then
			echo "$out"; exit 1
		fi
	done
done

log "all tests passed"
