//! Casting a ballot, and what a voter may learn of it afterwards.
//!
//! The hot path reads no database: the election comes from memory,
//! eligibility from the token's claims, and "already voted" from a Redis
//! set. The ballot is acknowledged (202) only once JetStream has stored it.
//!
//! Casting runs in named steps, each in its own file: [`admit`] (the rules,
//! no I/O), [`preflight`] (one Redis round trip), [`enqueue`] (seal and
//! publish) and [`enqueue::note_pending`] (the voter set, after the PubAck,
//! sent by [`voter_notes`] beside other ballots' notes).
//! Their spans are at debug level: at info, each cost more than the step's
//! own work, and the request's span already names the route and request id.

pub mod admit;
pub mod cast;
pub mod enqueue;
pub mod preflight;
pub mod receipts;
pub mod voter_notes;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiState;

/// Routes under the per-client limit layer.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(receipts::mine))
}

/// Routes whose handlers count the client themselves: casting in the
/// round trip its preflight sends anyway, receipts in the process (a Redis
/// key would date each look-up). They must stay out of the layer, or a
/// request would be counted twice.
pub fn routes_limited_in_handler() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(cast::cast)).routes(routes!(receipts::receipt))
}
