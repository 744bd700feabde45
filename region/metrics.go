package region

import (
	"crypto/subtle"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/pxe"
	"github.com/lpmos/lpmos/task"
)

// metrics are the region's own Prometheus metrics: its HTTP traffic, its
// tasks and its link to the store. The DHCP and TFTP servers keep their
// own counters (they import no metrics package); Server exports them with
// dhcpCollector and tftpCollector.
type metrics struct {
	bootRequests  *prometheus.CounterVec
	bootBytes     *prometheus.CounterVec
	agentRequests *prometheus.CounterVec
	watchLag      prometheus.Gauge
	heartbeat     prometheus.Histogram
}

func newMetrics(r *Region, reg prometheus.Registerer) *metrics {
	labels := prometheus.Labels{"region": r.cfg.RegionID}
	m := &metrics{
		bootRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_region_boot_requests_total", ConstLabels: labels,
			Help: "HTTP boot requests by kind (script, file, ipxe, template) and status code.",
		}, []string{"kind", "code"}),
		bootBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_region_boot_sent_bytes_total", ConstLabels: labels,
			Help: "Bytes of HTTP boot responses (scripts, boot files, iPXE binaries, templates) by kind.",
		}, []string{"kind"}),
		agentRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_region_agent_requests_total", ConstLabels: labels,
			Help: "Agent API requests by route and status code.",
		}, []string{"route", "code"}),
		watchLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lpmos_region_watch_lag_seconds", ConstLabels: labels,
			Help: "Delay between a task change being made and this region processing it (last change).",
		}),
		heartbeat: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lpmos_region_heartbeat_duration_seconds", ConstLabels: labels,
			Help:    "Latency of the region's heartbeat write (lease keep-alive and one transaction): the store as the region sees it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.bootRequests, m.bootBytes, m.agentRequests, m.watchLag, m.heartbeat,
		&regionCollector{r: r,
			tasks: prometheus.NewDesc("lpmos_region_tasks", "The region's active tasks by status.", []string{"status"}, labels),
			idle: prometheus.NewDesc("lpmos_region_task_idle_max_seconds",
				"The longest any of the region's active tasks in a status has gone without activity (0 when none is in it).", []string{"status"}, labels),
			storeUp: prometheus.NewDesc("lpmos_region_store_up",
				"1 when the region's last heartbeat reached the store, else 0.", nil, labels),
			lastHeartbeat: prometheus.NewDesc("lpmos_region_last_heartbeat_timestamp_seconds",
				"When the region last wrote its heartbeat to the store (Unix time; 0: never).", nil, labels),
			leader: prometheus.NewDesc("lpmos_region_leader",
				"1 while this process leads its region (answers machines and writes), 0 while it is a standby.", nil, labels),
			traceEvents: prometheus.NewDesc("lpmos_region_trace_events_total",
				"Boot trace events by what became of them: recorded, dropped_queue (the recorder's queue was full), "+
					"dropped_machines (too many machines' traces waited to be written), not_leader (discarded: not leading).", []string{"result"}, labels),
			traceWrites: prometheus.NewDesc("lpmos_region_trace_writes_total",
				"Boot trace writes to the store (one per machine at most once a second) by result: ok or error.", []string{"result"}, labels),
		})
	return m
}

// regionCollector reads the region's task view and heartbeat state at
// scrape time.
type regionCollector struct {
	r                                           *Region
	tasks, idle, storeUp, lastHeartbeat, leader *prometheus.Desc
	traceEvents, traceWrites                    *prometheus.Desc
}

func (c *regionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tasks
	ch <- c.idle
	ch <- c.storeUp
	ch <- c.lastHeartbeat
	ch <- c.leader
	ch <- c.traceEvents
	ch <- c.traceWrites
}

func (c *regionCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	counts := r.tasks.CountByStatus()
	idle := map[task.Status]float64{}
	now := r.cfg.Now()
	for _, t := range r.tasks.Tasks() {
		if d := now.Sub(t.LastActivity()).Seconds(); d > idle[t.Status] {
			idle[t.Status] = d
		}
	}
	for _, st := range task.Statuses() {
		if st.Terminal() {
			continue // the region's view holds active tasks only
		}
		ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(counts[st]), string(st))
		ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, idle[st], string(st))
	}
	r.hbMu.RLock()
	ok, last := r.storeOK, r.lastHeartbeat
	r.hbMu.RUnlock()
	up, at := 0.0, 0.0
	if ok {
		up = 1
	}
	if !last.IsZero() {
		at = float64(last.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.storeUp, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.lastHeartbeat, prometheus.GaugeValue, at)
	leading := 0.0
	if r.Leading() {
		leading = 1
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, leading)
	ts := r.trace.Stats()
	for result, n := range map[string]uint64{"recorded": ts.Recorded, "dropped_queue": ts.Dropped,
		"dropped_machines": ts.DroppedMachines, "not_leader": ts.NotLeader} {
		ch <- prometheus.MustNewConstMetric(c.traceEvents, prometheus.CounterValue, float64(n), result)
	}
	ch <- prometheus.MustNewConstMetric(c.traceWrites, prometheus.CounterValue, float64(ts.Writes), "ok")
	ch <- prometheus.MustNewConstMetric(c.traceWrites, prometheus.CounterValue, float64(ts.WriteErrors), "error")
}

// bootKinds name the region's boot routes for the metrics.
var bootKinds = map[string]string{
	"GET /boot/files/":                          "file",
	"GET " + ipxeRoute:                          "ipxe",
	"GET /boot/{file}":                          "script",
	"GET /boot/templates/{task}/{token}/{name}": "template",
}

// instrument counts the requests next serves: boot requests by kind and
// agent API requests by route (the mux pattern, never the raw path, so
// that the series stay bounded), each with its status code.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, req)
		code := strconv.Itoa(rec.status)
		if kind, ok := bootKinds[req.Pattern]; ok {
			m.bootRequests.WithLabelValues(kind, code).Inc()
			m.bootBytes.WithLabelValues(kind).Add(float64(rec.bytes))
			return
		}
		route := req.Pattern
		switch {
		case route == "":
			route = "unmatched"
		case !strings.Contains(route, " /api/") && route != "GET "+agent.PathHealth:
			route = "other"
		}
		m.agentRequests.WithLabelValues(route, code).Inc()
	})
}

// countingWriter remembers the status code and counts the body bytes.
type countingWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	bytes       int64
}

func (c *countingWriter) WriteHeader(code int) {
	if !c.wroteHeader {
		c.status, c.wroteHeader = code, true
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.wroteHeader = true
	n, err := c.ResponseWriter.Write(b)
	c.bytes += int64(n)
	return n, err
}

// ReadFrom keeps the server's sendfile path for boot files (http.ServeContent
// copies with io.Copy, which uses the writer's ReadFrom).
func (c *countingWriter) ReadFrom(src io.Reader) (int64, error) {
	c.wroteHeader = true
	n, err := io.Copy(c.ResponseWriter, src)
	c.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// dhcpCollector exports a DHCP server's counters at scrape time.
type dhcpCollector struct {
	s                                                           *dhcp.Server
	packets, queueFull, replies, sendErrors, poolSize, poolUsed *prometheus.Desc
	latency                                                     *prometheus.Desc
}

func newDHCPCollector(s *dhcp.Server, labels prometheus.Labels) *dhcpCollector {
	return &dhcpCollector{s: s,
		packets: prometheus.NewDesc("lpmos_dhcp_packets_total",
			"DHCP packets handled, by message type and outcome (answered; handled: release, decline; or why not answered: policy_ignored, not_boot_client, not_for_us, no_address, ignored, unsupported_arch, no_pool, pool_exhausted, policy_error, malformed).",
			[]string{"type", "outcome"}, labels),
		queueFull: prometheus.NewDesc("lpmos_dhcp_queue_dropped_total",
			"DHCP packets dropped unread because every worker was busy and the queue full.", nil, labels),
		replies: prometheus.NewDesc("lpmos_dhcp_replies_total", "DHCP replies by type (offer, ack, nak).", []string{"type"}, labels),
		sendErrors: prometheus.NewDesc("lpmos_dhcp_send_errors_total",
			"DHCP replies the socket refused to send.", nil, labels),
		poolSize: prometheus.NewDesc("lpmos_dhcp_pool_addresses",
			"Addresses a full-mode DHCP pool can hand out, by subnet.", []string{"subnet"}, labels),
		poolUsed: prometheus.NewDesc("lpmos_dhcp_pool_addresses_in_use",
			"Addresses of a full-mode DHCP pool offered, bound or declined (not expired), by subnet.", []string{"subnet"}, labels),
		latency: prometheus.NewDesc("lpmos_dhcp_decision_duration_seconds",
			"Time to decide the answer to one DHCP packet (parsing, boot policy, lease table), queueing and sending excluded.", nil, labels),
	}
}

func (c *dhcpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.packets, c.queueFull, c.replies, c.sendErrors, c.poolSize, c.poolUsed, c.latency} {
		ch <- d
	}
}

func (c *dhcpCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	for _, p := range c.s.Packets() {
		counter(c.packets, p.Count, p.Type, string(p.Outcome))
	}
	st := c.s.Stats()
	counter(c.queueFull, st.QueueFull)
	counter(c.replies, st.Offers, "offer")
	counter(c.replies, st.Acks, "ack")
	counter(c.replies, st.Naks, "nak")
	counter(c.sendErrors, st.SendErrors)
	for _, p := range c.s.PoolUsage() {
		ch <- prometheus.MustNewConstMetric(c.poolSize, prometheus.GaugeValue, float64(p.Size), p.Subnet)
		ch <- prometheus.MustNewConstMetric(c.poolUsed, prometheus.GaugeValue, float64(p.InUse), p.Subnet)
	}
	h := c.s.DecisionLatency()
	buckets := make(map[float64]uint64, len(h.Buckets))
	for i, n := range h.Buckets {
		buckets[dhcp.LatencyBuckets[i]] = n
	}
	ch <- prometheus.MustNewConstHistogram(c.latency, h.Count, h.Sum, buckets)
}

// tftpCollector exports a TFTP server's counters at scrape time.
type tftpCollector struct {
	s                                 *pxe.TFTPServer
	transfers, refused, bytes, active *prometheus.Desc
}

func newTFTPCollector(s *pxe.TFTPServer, labels prometheus.Labels) *tftpCollector {
	return &tftpCollector{s: s,
		transfers: prometheus.NewDesc("lpmos_tftp_transfers_total",
			"TFTP transfers that ended, by result (completed, failed, probe: the client stopped after the option negotiation, stopped: server shutdown).",
			[]string{"result"}, labels),
		refused: prometheus.NewDesc("lpmos_tftp_requests_refused_total",
			"TFTP requests refused before a transfer, by reason (invalid: write, bad mode or unsafe path; busy; not_found).",
			[]string{"reason"}, labels),
		bytes:  prometheus.NewDesc("lpmos_tftp_sent_bytes_total", "File bytes TFTP clients acknowledged.", nil, labels),
		active: prometheus.NewDesc("lpmos_tftp_transfers_active", "TFTP transfers running now.", nil, labels),
	}
}

func (c *tftpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.transfers
	ch <- c.refused
	ch <- c.bytes
	ch <- c.active
}

func (c *tftpCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	counter(c.transfers, st.Completed, "completed")
	counter(c.transfers, st.Failed, "failed")
	counter(c.transfers, st.Probes, "probe")
	counter(c.transfers, st.Stopped, "stopped")
	counter(c.refused, st.Refused, "invalid")
	counter(c.refused, st.Busy, "busy")
	counter(c.refused, st.NotFound, "not_found")
	counter(c.bytes, st.Bytes)
	ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(st.Active))
}

// metricsHandler serves the registry to callers with the metrics token
// (a bearer token compared in constant time); everyone else gets 401.
// The region's HTTP listener faces the provisioning network, where anyone
// can connect, so /metrics is never served without a token.
func metricsHandler(g prometheus.Gatherer, token string) http.Handler {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got := httpjson.BearerToken(req)
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lpmos-metrics"`)
			httpjson.WriteError(w, httpjson.Errorf(http.StatusUnauthorized, "unauthorized", "missing or wrong metrics token"))
			return
		}
		h.ServeHTTP(w, req)
	})
}

// observeHeartbeat records one heartbeat write's latency.
func (m *metrics) observeHeartbeat(d time.Duration) { m.heartbeat.Observe(d.Seconds()) }
