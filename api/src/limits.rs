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
    let quota = Quota::per_minute(per_minute);
    rate_limit::enforce_or_let_through(&state.deps.redis, &key, quota, scope).await.map(drop)
}
