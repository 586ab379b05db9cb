//! Per-citizen rate limits of the API (the per-client limit on every route
//! is middleware in `tally_common::rate_limit`).

use tally_common::ApiError;
use tally_common::rate_limit::{self, Quota};

use crate::ApiState;

/// Counts one request of `citizen_id` against `per_minute`. Fails open when
/// Redis cannot answer, like the per-client limit: these limits guard
/// capacity, not secrets.
pub async fn per_citizen(
    state: &ApiState,
    scope: &'static str,
    citizen_id: i64,
    per_minute: u32,
) -> Result<(), ApiError> {
    let key = state.deps.keys.rate_limit(scope, &citizen_id.to_string());
    match rate_limit::check(&state.deps.redis, &key, Quota::per_minute(per_minute)).await {
        Ok(decision) => decision.enforce(scope).map(drop),
        Err(error) => {
            metrics::counter!("tally_rate_limit_errors_total").increment(1);
            tracing::warn!(
                error = format!("{error:#}"),
                scope,
                "rate limit unavailable; request let through"
            );
            Ok(())
        }
    }
}
