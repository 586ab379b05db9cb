//! Every metric Tally exports, declared in this one place with its help
//! text. The code that records a metric names it with the same string; an
//! integration test (`observability`) checks that each `tally_` family
//! on `/metrics` has its help line, so a metric added elsewhere without
//! an entry here fails the build's tests.

use metrics::Unit;

enum Kind {
    Counter,
    Gauge,
    Histogram(Unit),
}

use Kind::{Counter, Gauge, Histogram};

const METRICS: &[(&str, Kind, &str)] = &[
    // Every role
    ("tally_build_info", Gauge, "Always 1; labels carry the version and the roles this process runs"),
    (
        "tally_dependency_up",
        Gauge,
        "1 when the last readiness probe of a dependency (postgres, redis, nats) succeeded",
    ),
    // The standard process metrics (`process.rs`).
    (
        "process_cpu_seconds_total",
        Counter,
        "User and system CPU time this process has used, in whole seconds",
    ),
    ("process_start_time_seconds", Gauge, "When this process started, in seconds since the Unix epoch"),
    ("process_resident_memory_bytes", Gauge, "Resident memory of this process"),
    ("process_virtual_memory_bytes", Gauge, "Virtual memory of this process"),
    ("process_threads", Gauge, "Operating-system threads of this process"),
    ("process_open_fds", Gauge, "Open file descriptors of this process"),
    ("process_max_fds", Gauge, "The most file descriptors this process may open"),
    // HTTP listeners
    ("tally_http_requests_total", Counter, "HTTP requests answered, by route template, method and status"),
    (
        "tally_http_request_duration_seconds",
        Histogram(Unit::Seconds),
        "HTTP request latency, by route template and method",
    ),
    (
        "tally_http_shed_total",
        Counter,
        "Requests refused 503 `overloaded` because the listener was at http.max_in_flight",
    ),
    (
        "tally_http_connections_dropped_total",
        Counter,
        "Connections closed by the server, by reason (e.g. never_started: no request within the deadline)",
    ),
    ("tally_rate_limited_total", Counter, "Requests refused 429, by limit scope"),
    (
        "tally_rate_limit_errors_total",
        Counter,
        "Rate-limit checks Redis could not answer; the request was let through",
    ),
    (
        "tally_attempts_slowed_total",
        Counter,
        "Sign-in attempts held back by the per-citizen backstop, by scope",
    ),
    // Accounts
    ("tally_auth_failures_total", Counter, "Refused credentials or tokens, by reason"),
    ("tally_logins_total", Counter, "Successful logins"),
    ("tally_signups_total", Counter, "Successful sign-ups"),
    ("tally_password_hashes_running", Gauge, "Password hashes running now"),
    ("tally_password_hashes_peak", Gauge, "The most password hashes ever running at once in this process"),
    (
        "tally_password_hashes_refused_total",
        Counter,
        "Requests answered 503 because no hashing slot freed up within auth.hash_wait_ms",
    ),
    // Ballots in the API
    ("tally_votes_accepted_total", Counter, "Ballots answered 202: stored by JetStream"),
    ("tally_votes_refused_total", Counter, "Ballots refused by the API, by reason"),
    (
        "tally_publish_failures_total",
        Counter,
        "Ballots JetStream did not confirm, by kind (timeout, refused)",
    ),
    (
        "tally_publish_duration_seconds",
        Histogram(Unit::Seconds),
        "Time from publishing a ballot to its PubAck",
    ),
    (
        "tally_ballots_holdable",
        Gauge,
        "Ballots workers may hold back unrecorded: the anonymity sets of the open elections (every 30 s)",
    ),
    // Workers
    ("tally_votes_recorded_total", Counter, "Ballots recorded in Postgres"),
    (
        "tally_votes_duplicates_skipped_total",
        Counter,
        "Redelivered ballots found already recorded and acked again",
    ),
    ("tally_votes_rejected_total", Counter, "Ballots the workers rejected, by reason"),
    (
        "tally_worker_failures_total",
        Counter,
        "Worker batches handed back after a failure, by the dependency that failed (stage)",
    ),
    ("tally_worker_redeliveries_total", Counter, "Messages JetStream delivered more than once"),
    (
        "tally_worker_sequences_reused_total",
        Counter,
        "Held ballots whose stream sequence the broker gave to another ballot (the broker lost messages)",
    ),
    ("tally_worker_batch_duration_seconds", Histogram(Unit::Seconds), "Time to record one batch"),
    ("tally_worker_batch_size", Histogram(Unit::Count), "Ballots per recorded batch"),
    ("tally_ballots_held", Gauge, "Ballots held back until their election ends (the anonymity set)"),
    (
        "tally_quarantined_ballots_total",
        Counter,
        "Ballots moved to the quarantine stream because they could not be opened or checked",
    ),
    ("tally_quarantine_waiting_ballots", Gauge, "Ballots waiting in the quarantine stream, by election"),
    ("tally_records_built_total", Counter, "Election records built and signed by this process"),
    (
        "tally_reconcile_drift_total",
        Counter,
        "Tally entries reconcile found differing between Redis and Postgres, summed over passes",
    ),
    (
        "tally_reconcile_last_drift",
        Gauge,
        "Tally entries that differed between Redis and Postgres at the last reconcile pass",
    ),
    ("tally_stream_messages", Gauge, "Messages in the VOTES stream"),
    ("tally_stream_bytes", Gauge, "Bytes in the VOTES stream"),
    (
        "tally_consumer_pending_messages",
        Gauge,
        "Messages in the stream not yet delivered to the workers' consumer",
    ),
    ("tally_consumer_ack_pending_messages", Gauge, "Messages delivered to the workers and not yet acked"),
    ("tally_consumer_redelivered_messages", Gauge, "Messages delivered more than once and not yet acked"),
    ("tally_consumer_waiting_pulls", Gauge, "Pull requests the workers' consumer is waiting on"),
    // Broadcaster
    ("tally_viewers", Gauge, "Live viewers connected (WebSocket and SSE)"),
    ("tally_broadcast_messages_total", Counter, "Frames sent to viewers, by transport"),
    (
        "tally_broadcast_coalesced_total",
        Counter,
        "Tally updates folded into a newer one before a viewer read them, by transport",
    ),
    (
        "tally_broadcast_dropped_total",
        Counter,
        "Viewers disconnected, by reason (send_timeout, no_pong, frame_too_big)",
    ),
    (
        "tally_broadcast_delay_seconds",
        Histogram(Unit::Seconds),
        "Time from a tally's commit to its frame being sent",
    ),
];

/// Registers the help text (and unit) of every metric with the recorder.
pub fn describe() {
    for (name, kind, help) in METRICS {
        let (name, help) = (*name, *help);
        match kind {
            Counter => metrics::describe_counter!(name, help),
            Gauge => metrics::describe_gauge!(name, help),
            Histogram(unit) => metrics::describe_histogram!(name, *unit, help),
        }
    }
}
