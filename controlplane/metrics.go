package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// metrics are the control plane's Prometheus metrics, registered on the
// registry the embedder passes in (never the global one).
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// watchLag is the delay between a task change being made and this
	// replica processing it, for the last change.
	watchLag prometheus.Gauge
	// ended counts the tasks this replica saw end, by final status.
	ended *prometheus.CounterVec
	// certExpiry is set by ListenAndServe when it serves TLS.
	certExpiry *prometheus.GaugeVec
	// retries counts the retries this replica made, by trigger (manual,
	// auto).
	retries *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, view *task.View, regions *regionCache, st store.Store, log *slog.Logger) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lpmos_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}, []string{"route"}),
		watchLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lpmos_watch_lag_seconds", Help: "Delay between a task change being made and this replica processing it (last change).",
		}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_tasks_ended_total", Help: "Tasks this replica saw end, by final status (completed, failed, cancelled...); every replica counts every task.",
		}, []string{"status"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_task_retries_total", Help: "Retries of failed or cancelled tasks this replica started, by trigger (manual, auto).",
		}, []string{"trigger"}),
	}
	m.retries.WithLabelValues(retryManual) // export zeros, not absence
	m.retries.WithLabelValues(retryAuto)
	m.certExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lpmos_tls_certificate_expiry_timestamp_seconds",
		Help: "When the certificate the control plane serves HTTPS with expires (Unix time), by certificate file; absent without TLS. The file is read at start: restart after renewing it.",
	}, []string{"file"})
	for _, st := range task.Statuses() {
		if st.Terminal() {
			m.ended.WithLabelValues(string(st)) // every series from the start, so that rate() sees the first one
		}
	}
	reg.MustRegister(m.requests, m.duration, m.watchLag, m.ended, m.certExpiry, m.retries,
		&regionsCollector{regions: regions, up: prometheus.NewDesc("lpmos_region_up",
			"1 while the region heartbeats (its heartbeat key, on a 30 s lease, exists and it did not sign off), else 0.", []string{"region"}, nil)},
		&taskCollector{view: view, desc: prometheus.NewDesc("lpmos_tasks", "Tasks by status, from this replica's cache.", []string{"status"}, nil)},
	)
	if db, ok := st.(dbSizer); ok {
		reg.MustRegister(&dbCollector{db: db, log: log,
			size:  prometheus.NewDesc("lpmos_store_db_size_bytes", "Size of the store's database file (etcd: the largest of its members'), read at scrape time.", nil, nil),
			quota: prometheus.NewDesc("lpmos_store_db_quota_bytes", "The store's quota: once the database reaches it, etcd refuses every write.", nil, nil),
		})
	}
	return m
}

// registerCaches exports what the region and dead-letter caches know, read
// at scrape time.
func (m *metrics) registerCaches(reg *prometheus.Registry, regions *regionCache, dlq *dlqCache) {
	reg.MustRegister(
		&funcCollector{desc: prometheus.NewDesc("lpmos_regions_offline",
			"Regions listed offline: their heartbeat lease expired or they said so (from this replica's cache).", nil, nil),
			collect: func(desc *prometheus.Desc, ch chan<- prometheus.Metric) {
				n := 0
				for _, r := range regions.list() {
					if r.Status == task.RegionOffline {
						n++
					}
				}
				ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(n))
			}},
		&funcCollector{desc: prometheus.NewDesc("lpmos_dead_letters",
			"Entries of the dead-letter list by kind (tasks, webhooks), from this replica's cache.", []string{"kind"}, nil),
			collect: func(desc *prometheus.Desc, ch chan<- prometheus.Metric) {
				counts := dlq.count()
				for _, k := range task.DLQKinds() {
					ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(counts[k]), string(k))
				}
			}},
	)
}

// funcCollector is one metric computed at scrape time.
type funcCollector struct {
	desc    *prometheus.Desc
	collect func(*prometheus.Desc, chan<- prometheus.Metric)
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) { c.collect(c.desc, ch) }

// dbSizer is a store that can tell how full it is: the etcd store. The
// memory store has no quota and does not implement it.
type dbSizer interface {
	DBSize(ctx context.Context) (used, quota int64, err error)
}

// dbCollector reports the store's size and quota at scrape time, so that
// an alert can fire well before the quota stops every write.
type dbCollector struct {
	db          dbSizer
	log         *slog.Logger
	size, quota *prometheus.Desc
}

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.size; ch <- c.quota }

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	// A scrape has no context of its own; bound it so that an unreachable
	// store cannot hold the scrape.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	used, quota, err := c.db.DBSize(ctx)
	if err != nil {
		c.log.Warn("cannot read the store's size for /metrics", "err", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(used))
	ch <- prometheus.MustNewConstMetric(c.quota, prometheus.GaugeValue, float64(quota))
}

// regionsCollector reports every known region's liveness at scrape time.
type regionsCollector struct {
	regions *regionCache
	up      *prometheus.Desc
}

func (c *regionsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.up }

func (c *regionsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.regions.list() {
		v := 0.0
		if r.Status == task.RegionOnline {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, v, r.ID)
	}
}

// taskCollector counts tasks by status at scrape time.
type taskCollector struct {
	view *task.View
	desc *prometheus.Desc
}

func (c *taskCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *taskCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.view.CountByStatus()
	for _, st := range task.Statuses() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
}

func (m *metrics) handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// instrument counts requests by the mux pattern that served them (bounded
// cardinality: never the raw path).
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		m.requests.WithLabelValues(route, strconv.Itoa(rec.status)).Inc()
		m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// tlsServed records the expiry of the certificate ListenAndServe serves.
func (m *metrics) tlsServed(certFile, keyFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return err
		}
	}
	m.certExpiry.WithLabelValues(certFile).Set(float64(leaf.NotAfter.Unix()))
	return nil
}
