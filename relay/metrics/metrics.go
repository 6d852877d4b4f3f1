// Package metrics defines every Prometheus series mailgate exports, built on a registry the caller
// passes in (never the global one, so tests can build as many as they like).
//
// Names follow mailgate_<subsystem>_<name>_<unit>; counters end in _total. Labels are low-cardinality
// words only (channel, transport, result, reason, server): never a sender, recipient, token or message
// id. Packages take a *Metrics; tests build one with New(prometheus.NewRegistry()).
package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics holds mailgate's collectors.
type Metrics struct {
	// Submission.
	Sessions         *prometheus.CounterVec // listener
	SessionsActive   prometheus.Gauge
	AuthAttempts     *prometheus.CounterVec // mechanism, result (success, failure, rate_limited)
	MessagesAccepted *prometheus.CounterVec // channel
	MessagesRejected *prometheus.CounterVec // stage (mail, rcpt, data), reason
	// Queue.
	QueueDepth          prometheus.Gauge
	QueueOldestAge      prometheus.Gauge
	QueueByTransport    *prometheus.GaugeVec // transport: messages queued for it
	QueueHeld           prometheus.Gauge     // messages on hold (mailgate queue hold)
	QueueQuarantined    prometheus.Counter
	DeliveryAttempts    *prometheus.CounterVec   // transport, result (delivered, deferred, bounced)
	DeliveryDuration    *prometheus.HistogramVec // transport, result
	Bounces             *prometheus.CounterVec   // reason
	DeliveryFaults      *prometheus.CounterVec   // transport, fault (relay.Fault: temporary, setup, message, tls, address)
	DeliveryAlerts      *prometheus.GaugeVec     // transport, fault (setup, tls): 1 while an alert is raised
	OAuthTokenErrors    *prometheus.CounterVec   // server, reason
	OAuthTokenRefreshes *prometheus.CounterVec   // server
	// OAuthCredentialExpiry is when each server's app credential (client certificate or secret) expires.
	OAuthCredentialExpiry *prometheus.GaugeVec     // server
	SESEvents             *prometheus.CounterVec   // type (bounce, complaint, delivery_delay, ...), result
	UpstreamFailures      *prometheus.CounterVec   // server, stage (connect, tls, auth): sessions that could not be set up
	ShapingWait           *prometheus.HistogramVec // server: time a message waited for its per-minute budget
	UpstreamConnections   *prometheus.CounterVec   // server, tls (none, starttls, implicit)
	ConfigReloads         *prometheus.CounterVec   // result
	ConfigRestartNeeded   *prometheus.CounterVec   // key (a configuration key, e.g. limits.max_connections)
	ConfigLastReload      prometheus.Gauge         // Unix time of the last successful load (start or reload)
	DeliveryDeferrals     *prometheus.CounterVec   // transport, reason (DeferralReasons)
	DeliveryLatency       *prometheus.HistogramVec // transport: accepted (queued) to delivered, per recipient
	BuildInfo             *prometheus.GaugeVec     // version, revision, go_version: always 1
	ComposeDuration       prometheus.Histogram
	ComposedMessageBytes  prometheus.Histogram
}

// DeferralReasons are the values of DeliveryDeferrals' reason label: a fixed set, so a dashboard can
// stack them and an unknown upstream text never becomes a label.
func DeferralReasons() []string {
	return []string{"setup", "auth", "tls", "connect", "throttle", "quota", "rate_limited", "temporary"}
}

// New registers every collector on reg.
func New(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		Sessions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_submission_sessions_total", Help: "SMTP submission sessions opened, by listener.",
		}, []string{"listener"}),
		SessionsActive: f.NewGauge(prometheus.GaugeOpts{
			Name: "mailgate_submission_sessions_active", Help: "SMTP submission sessions open now.",
		}),
		AuthAttempts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_submission_auth_attempts_total", Help: "SMTP AUTH attempts by mechanism and result.",
		}, []string{"mechanism", "result"}),
		MessagesAccepted: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_submission_messages_accepted_total", Help: "Messages accepted and queued, by channel.",
		}, []string{"channel"}),
		MessagesRejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_submission_messages_rejected_total", Help: "Submission refusals by SMTP stage and reason.",
		}, []string{"stage", "reason"}),
		QueueDepth: f.NewGauge(prometheus.GaugeOpts{
			Name: "mailgate_queue_messages", Help: "Messages in the spool awaiting delivery.",
		}),
		QueueOldestAge: f.NewGauge(prometheus.GaugeOpts{
			Name: "mailgate_queue_oldest_message_age_seconds", Help: "Age of the oldest message in the spool.",
		}),
		QueueByTransport: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailgate_queue_transport_messages", Help: "Messages in the spool by the transport that delivers them (updated every second).",
		}, []string{"transport"}),
		QueueHeld: f.NewGauge(prometheus.GaugeOpts{
			Name: "mailgate_queue_held_messages", Help: "Messages on hold in the spool (mailgate queue hold), not attempted until released.",
		}),
		QueueQuarantined: f.NewCounter(prometheus.CounterOpts{
			Name: "mailgate_queue_quarantined_total", Help: "Unreadable spool entries moved to quarantine.",
		}),
		DeliveryAttempts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_delivery_attempts_total", Help: "Per-recipient delivery attempts by transport and result.",
		}, []string{"transport", "result"}),
		DeliveryDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mailgate_delivery_duration_seconds", Help: "Duration of one delivery attempt by transport and result.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10),
		}, []string{"transport", "result"}),
		Bounces: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_bounces_total", Help: "Recipients recorded as bounced, by reason.",
		}, []string{"reason"}),
		DeliveryFaults: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_delivery_failures_total", Help: "Per-recipient delivery failures by transport and whose fault (relay.Classify).",
		}, []string{"transport", "fault"}),
		DeliveryAlerts: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailgate_delivery_alert", Help: "1 while a transport has a setup or Force TLS fault an operator must fix (see /readyz).",
		}, []string{"transport", "fault"}),
		OAuthTokenErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_oauth_token_errors_total", Help: "OAuth token failures by server and reason.",
		}, []string{"server", "reason"}),
		OAuthTokenRefreshes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_oauth_token_refreshes_total", Help: "OAuth access tokens obtained, by server.",
		}, []string{"server"}),
		OAuthCredentialExpiry: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailgate_oauth_credential_expiry_timestamp_seconds",
			Help: "When each server's OAuth app credential (client certificate NotAfter, or the configured client secret expiry) expires, as a Unix time.",
		}, []string{"server"}),
		SESEvents: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_ses_events_total", Help: "SES notifications received through SNS, by type and result.",
		}, []string{"type", "result"}),
		UpstreamFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_upstream_connection_failures_total", Help: "Upstream SMTP sessions that could not be set up, by server and stage (connect, tls, auth).",
		}, []string{"server", "stage"}),
		ShapingWait: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mailgate_shaping_wait_seconds", Help: "Time a message waited for its upstream's per-minute budget before it was sent.",
			Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"server"}),
		UpstreamConnections: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_upstream_connections_total", Help: "Upstream SMTP connections opened, by server and TLS mode.",
		}, []string{"server", "tls"}),
		ConfigReloads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_config_reloads_total", Help: "Configuration reloads by result.",
		}, []string{"result"}),
		ConfigRestartNeeded: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_config_restart_needed_total",
			Help: "Reloads that changed a setting read only at start (by configuration key): a restart is needed to apply it.",
		}, []string{"key"}),
		ConfigLastReload: f.NewGauge(prometheus.GaugeOpts{
			Name: "mailgate_config_last_reload_success_timestamp_seconds", Help: "Unix time of the last successful configuration load (start or SIGHUP).",
		}),
		DeliveryDeferrals: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_delivery_deferrals_total", Help: "Per-recipient deferrals by transport and reason (" + strings.Join(DeferralReasons(), ", ") + ").",
		}, []string{"transport", "reason"}),
		DeliveryLatency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mailgate_delivery_latency_seconds", Help: "Time from acceptance (250 queued) to delivery, per recipient, by transport.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
		}, []string{"transport"}),
		BuildInfo: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailgate_build_info", Help: "Always 1; the labels say which mailgate build runs.",
		}, []string{"version", "revision", "go_version"}),
		ComposeDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name: "mailgate_compose_duration_seconds", Help: "Time to compose one message.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 3, 10),
		}),
		ComposedMessageBytes: f.NewHistogram(prometheus.HistogramOpts{
			Name: "mailgate_compose_message_size_bytes", Help: "Size of composed messages.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 10),
		}),
	}
}
