//! Logs through `tracing` (human or JSON lines) and metrics through the
//! `metrics` facade, exported in Prometheus' text format.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

/// Targets that log whole messages at trace level.
const PAYLOAD_LOGGING_TARGETS: &[&str] = &["async_nats"];

/// Installs the global subscriber. A second call (several apps in one test
/// process) keeps the first.
pub fn init_tracing(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.filter)
        .map_err(|e| anyhow::anyhow!("invalid setting `log.filter` (env TALLY_LOG__FILTER): {e}"))?;
    // The NATS client logs whole messages at trace level, and a ballot
    // pairs a citizen with a choice. Whatever the filter says, those
    // targets stop at debug (and stay quieter if the filter says so).
    let registry = tracing_subscriber::registry().with(filter).with(filter_fn(|meta| {
        *meta.level() <= Level::DEBUG || !PAYLOAD_LOGGING_TARGETS.iter().any(|t| meta.target().starts_with(t))
    }));
    let result = match settings.format {
        LogFormat::Human => registry.with(tracing_subscriber::fmt::layer().with_target(true)).try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("tracing subscriber already installed");
    }
    Ok(())
}

/// Buckets in seconds, from sub-millisecond HTTP calls to slow batches.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            crate::metrics::describe();
            metrics::counter!("tally_http_shed_total").increment(0);
            handle
        })
        .clone()
}

/// Creates a counter at zero for each known label value, so rates and
/// alerts see a series from the start rather than none.
pub fn zero_counters(name: &'static str, label: &'static str, values: &[&'static str]) {
    for value in values {
        metrics::counter!(name, label => *value).increment(0);
    }
}
