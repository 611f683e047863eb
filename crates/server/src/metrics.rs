//! Prometheus metrics, rendered in the text format for `GET /metrics`.
//!
//! A registry of its own (not the prometheus default one) so tests and
//! several servers in one process do not share counters. Callers get small
//! typed methods instead of the metric handles, which keeps label names and
//! values consistent across the code base.

use std::sync::Arc;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use ignis_protocol::Verdict;

use crate::job::Timings;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Every value the `verdict` label can take: the run verdicts plus
/// `canceled`. Pre-registered so dashboards see zeros, not gaps, before the
/// first job of each kind.
fn verdicts() -> impl Iterator<Item = &'static str> {
    Verdict::ALL
        .into_iter()
        .map(Verdict::as_str)
        .chain(["canceled"])
}

/// VM failure kinds pre-registered per language by [`Metrics::add_language`].
const VM_FAILURE_KINDS: [&str; 4] = ["boot", "dead", "protocol", "run"];

const PHASES: [&str; 4] = ["queue_wait", "acquire", "run", "total"];

/// A snapshot restore takes tens of milliseconds, a cold boot of a heavy
/// runtime up to a minute; finer steps at the low end.
const READY_BUCKETS: [f64; 18] = [
    0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
    60.0,
];

/// How a VM came to be ready, as a metric label.
pub const ORIGINS: [&str; 2] = ["boot", "restore"];

/// From a few milliseconds (warm acquire) to the longest allowed job.
const PHASE_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The server's metrics. Cloning is cheap and shares the registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    queue_depth: IntGauge,
    pool_ready: IntGaugeVec,
    pool_booting: IntGaugeVec,
    vms_running: IntGauge,
    vm_ready_seconds: HistogramVec,
    vm_memory_bytes: IntGauge,
    vm_memory_budget_bytes: IntGauge,
    vm_failures: IntCounterVec,
    job_phase_seconds: HistogramVec,
    jobs: IntCounterVec,
    jobs_submitted: IntCounter,
    webhook_deliveries: IntCounterVec,
    http_requests: IntCounterVec,
    workers: IntGauge,
    worker_capacity: IntGauge,
    fleet_jobs: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers `metric` and hands it back, so definitions read as one expression.
fn reg<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> prometheus::Result<M> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    pub fn new() -> Metrics {
        // Every name, help text, label set and bucket list is a constant;
        // prometheus only rejects invalid or duplicate ones, which the unit
        // tests exercise, so a failure here is a bug, not a runtime condition.
        Metrics::try_new().expect("static metric definitions are valid")
    }

    fn try_new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            reg(&r, HistogramVec::new(opts, labels))
        };
        let inner = Inner {
            queue_depth: reg(
                &r,
                IntGauge::new("ignis_queue_depth", "Jobs waiting for a worker"),
            )?,
            pool_ready: gauge_vec(
                "ignis_pool_ready",
                "Booted VMs waiting in the warm pool",
                &["language"],
            )?,
            pool_booting: gauge_vec(
                "ignis_pool_booting",
                "VMs booting to refill the warm pool",
                &["language"],
            )?,
            vms_running: reg(&r, IntGauge::new("ignis_vms_running", "VMs running a job"))?,
            vm_ready_seconds: histogram_vec(
                "ignis_vm_ready_seconds",
                "From starting a VM (booted or restored) until its agent is ready",
                &["language", "origin"],
                &READY_BUCKETS,
            )?,
            vm_memory_bytes: reg(
                &r,
                IntGauge::new(
                    "ignis_vm_memory_bytes",
                    "Host memory charged to VMs: measured for idle ones, bounded for running ones",
                ),
            )?,
            vm_memory_budget_bytes: reg(
                &r,
                IntGauge::new(
                    "ignis_vm_memory_budget_bytes",
                    "Host memory VMs may take together",
                ),
            )?,
            vm_failures: counter_vec(
                "ignis_vm_failures_total",
                "VMs lost: failed to boot, died, or broke the protocol",
                &["language", "kind"],
            )?,
            job_phase_seconds: histogram_vec(
                "ignis_job_phase_seconds",
                "Where the time of finished jobs went",
                &["phase"],
                &PHASE_BUCKETS,
            )?,
            jobs: counter_vec("ignis_jobs_total", "Jobs ended, by verdict", &["verdict"])?,
            jobs_submitted: reg(
                &r,
                IntCounter::new("ignis_jobs_submitted_total", "Jobs accepted by the API"),
            )?,
            webhook_deliveries: counter_vec(
                "ignis_webhook_deliveries_total",
                "Webhook deliveries by final outcome (retries count once)",
                &["outcome"],
            )?,
            http_requests: counter_vec(
                "ignis_http_requests_total",
                "API responses by status class",
                &["status_class"],
            )?,
            workers: reg(
                &r,
                IntGauge::new("ignis_workers", "Workers announcing themselves now"),
            )?,
            worker_capacity: reg(
                &r,
                IntGauge::new(
                    "ignis_worker_capacity",
                    "Jobs the workers can run at once, together",
                ),
            )?,
            fleet_jobs: gauge_vec(
                "ignis_fleet_jobs",
                "Jobs ended by the live workers since each started, by verdict",
                &["verdict"],
            )?,
            registry: r.clone(),
        };
        for verdict in verdicts() {
            inner.jobs.with_label_values(&[verdict]);
        }
        for phase in PHASES {
            inner.job_phase_seconds.with_label_values(&[phase]);
        }
        for outcome in ["delivered", "failed"] {
            inner.webhook_deliveries.with_label_values(&[outcome]);
        }
        Ok(Metrics {
            inner: Arc::new(inner),
        })
    }

    /// The registry, for collectors registered elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Shows a configured language's pool and failure series at zero before
    /// its first VM boots.
    pub fn add_language(&self, language: &str) {
        let i = &self.inner;
        i.pool_ready.with_label_values(&[language]);
        i.pool_booting.with_label_values(&[language]);
        for origin in ORIGINS {
            i.vm_ready_seconds.with_label_values(&[language, origin]);
        }
        for kind in VM_FAILURE_KINDS {
            i.vm_failures.with_label_values(&[language, kind]);
        }
    }

    pub fn set_queue_depth(&self, jobs: usize) {
        self.inner.queue_depth.set(to_i64(jobs));
    }

    pub fn set_pool(&self, language: &str, ready: usize, booting: usize) {
        self.inner
            .pool_ready
            .with_label_values(&[language])
            .set(to_i64(ready));
        self.inner
            .pool_booting
            .with_label_values(&[language])
            .set(to_i64(booting));
    }

    pub fn set_vms_running(&self, vms: usize) {
        self.inner.vms_running.set(to_i64(vms));
    }

    /// `restored`: the VM came from a snapshot rather than a boot.
    pub fn observe_ready(&self, language: &str, restored: bool, secs: f64) {
        self.inner
            .vm_ready_seconds
            .with_label_values(&[language, ORIGINS[usize::from(restored)]])
            .observe(secs);
    }

    pub fn set_vm_memory(&self, used_mib: u64, budget_mib: u64) {
        let bytes = |mib: u64| i64::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        self.inner.vm_memory_bytes.set(bytes(used_mib));
        self.inner.vm_memory_budget_bytes.set(bytes(budget_mib));
    }

    /// `kind` is one of `boot`, `dead`, `protocol`, `run`: a closed set, since every
    /// distinct value is a time series kept forever.
    pub fn vm_failure(&self, language: &str, kind: &str) {
        self.inner
            .vm_failures
            .with_label_values(&[language, kind])
            .inc();
    }

    pub fn job_submitted(&self) {
        self.inner.jobs_submitted.inc();
    }

    /// Counts a job that ended with `verdict` (a run verdict's `as_str()` or
    /// `canceled`) and records where its time went.
    pub fn job_finished(&self, verdict: &str, timings: &Timings) {
        self.inner.jobs.with_label_values(&[verdict]).inc();
        let phases = [
            ("queue_wait", timings.queue_ms),
            ("acquire", timings.acquire_ms),
            ("run", timings.run_ms),
            ("total", timings.total_ms),
        ];
        for (phase, ms) in phases {
            self.inner
                .job_phase_seconds
                .with_label_values(&[phase])
                .observe(ms as f64 / 1000.0);
        }
    }

    /// Counts a job canceled before it ran, which has no timings to record.
    pub fn job_canceled(&self) {
        self.inner.jobs.with_label_values(&["canceled"]).inc();
    }

    /// Raises the webhook counters to the totals from
    /// `WebhookSender::stats`; call before rendering. The sender keeps plain
    /// atomics so it does not depend on this module.
    pub fn record_webhook_stats(&self, delivered: u64, failed: u64) {
        for (outcome, total) in [("delivered", delivered), ("failed", failed)] {
            let counter = self.inner.webhook_deliveries.with_label_values(&[outcome]);
            // Counters only go up; a smaller total (a new sender) adds nothing.
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Jobs this process ended, by verdict (what a worker announces).
    pub fn jobs_by_verdict(&self) -> std::collections::BTreeMap<String, u64> {
        verdicts()
            .map(|v| (v.to_owned(), self.inner.jobs.with_label_values(&[v]).get()))
            .collect()
    }

    /// The fleet as its workers last announced it.
    pub fn set_fleet(
        &self,
        workers: usize,
        capacity: usize,
        jobs: &std::collections::BTreeMap<String, u64>,
    ) {
        let i = &self.inner;
        i.workers.set(to_i64(workers));
        i.worker_capacity.set(to_i64(capacity));
        for verdict in verdicts() {
            let n = jobs.get(verdict).copied().unwrap_or(0);
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            i.fleet_jobs.with_label_values(&[verdict]).set(n);
        }
    }

    pub fn http_response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.inner.http_requests.with_label_values(&[class]).inc();
    }

    /// Everything in the Prometheus text format (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = TextEncoder::new().encode_utf8(&self.inner.registry.gather(), &mut out)
        {
            // Only a malformed family can fail to encode; serve what there is.
            tracing::error!(%error, "encoding metrics");
        }
        out
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_metrics() {
        let m = Metrics::new();
        m.add_language("python");
        let text = m.render();
        for name in [
            "ignis_queue_depth",
            "ignis_pool_ready",
            "ignis_pool_booting",
            "ignis_vms_running",
            "ignis_vm_ready_seconds",
            "ignis_vm_memory_bytes",
            "ignis_vm_failures_total",
            "ignis_job_phase_seconds",
            "ignis_jobs_total",
            "ignis_jobs_submitted_total",
            "ignis_webhook_deliveries_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        for verdict in verdicts() {
            assert!(text.contains(&format!("ignis_jobs_total{{verdict=\"{verdict}\"}} 0")));
        }
        assert!(text.contains("ignis_vm_failures_total{kind=\"dead\",language=\"python\"} 0"));
        assert!(text.contains("ignis_webhook_deliveries_total{outcome=\"failed\"} 0"));
    }

    #[test]
    fn records_jobs_pools_and_webhooks() {
        let m = Metrics::new();
        m.job_submitted();
        let t = Timings {
            queue_ms: 3,
            acquire_ms: 20,
            run_ms: 1500,
            total_ms: 1523,
        };
        m.job_finished("ok", &t);
        m.job_finished("timeout", &t);
        m.job_finished("ok", &t);
        m.job_canceled();
        m.set_pool("node", 2, 1);
        m.set_queue_depth(7);
        m.observe_ready("node", true, 0.08);
        m.vm_failure("node", "boot");
        m.record_webhook_stats(3, 1);
        m.record_webhook_stats(4, 1);
        m.http_response(404);
        let text = m.render();
        for line in [
            "ignis_jobs_total{verdict=\"ok\"} 2",
            "ignis_jobs_total{verdict=\"timeout\"} 1",
            "ignis_jobs_total{verdict=\"canceled\"} 1",
            "ignis_jobs_submitted_total 1",
            "ignis_job_phase_seconds_count{phase=\"run\"} 3",
            "ignis_job_phase_seconds_bucket{phase=\"run\",le=\"2.5\"} 3",
            "ignis_job_phase_seconds_bucket{phase=\"run\",le=\"1\"} 0",
            "ignis_pool_ready{language=\"node\"} 2",
            "ignis_pool_booting{language=\"node\"} 1",
            "ignis_queue_depth 7",
            "ignis_vm_ready_seconds_count{language=\"node\",origin=\"restore\"} 1",
            "ignis_vm_failures_total{kind=\"boot\",language=\"node\"} 1",
            "ignis_webhook_deliveries_total{outcome=\"delivered\"} 4",
            "ignis_webhook_deliveries_total{outcome=\"failed\"} 1",
            "ignis_http_requests_total{status_class=\"4xx\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
