use std::sync::Arc;

use axum::extract::FromRef;
use tally_domain::enrollment::EnrollmentKey;
use tally_domain::record::note::NoteVerifier;
use tally_domain::record::receipt_tree::ReceiptTree;
use tally_domain::seal::Sealer;
use tally_http::auth::Verifier;
use tally_http::rate_limit::PerClient;
use tally_platform::Deps;
use tally_platform::auth::{Passwords, TokenKeys};

use crate::ballots::voter_notes::VoterNotes;
use crate::election_cache::ElectionCache;
use crate::fences::Fences;
use crate::limits::PerAddress;
use crate::receipt_trees::{self, ReceiptTrees};

/// What every handler of the api role reads, built once per process.
/// Handlers get it by reference counting: axum hands each request its
/// own copy of the state, and a copy of every part would cost a dozen
/// reference counts and a few allocations per request.
#[derive(Clone)]
pub struct ApiState(Arc<Shared>);

pub struct Shared {
    pub deps: Deps,
    pub tokens: Arc<TokenKeys>,
    pub passwords: Passwords,
    pub verifier: Verifier,
    pub elections: ElectionCache,
    /// This process's HPKE context: every ballot it accepts is sealed with it.
    pub sealer: Arc<Sealer>,
    /// The per-client limit, whether a layer or a handler counts it.
    pub per_client: PerClient,
    pub receipt_limit: PerAddress,
    pub fences: Fences,
    /// The secret receipts derived from an Idempotency-Key are keyed with.
    pub receipt_key: Arc<[u8]>,
    /// The secret enrollment codes are hashed with.
    pub enrollment: EnrollmentKey,
    /// The public half of the record key, served to anyone who checks a record.
    pub record_key: Arc<NoteVerifier>,
    /// Published records' receipt trees, so a proof is not a pass over
    /// every receipt.
    pub receipt_trees: Arc<ReceiptTrees<ReceiptTree>>,
    /// Voters whose ballot was stored, on their way to the voter set.
    pub voter_notes: VoterNotes,
}

impl ApiState {
    pub fn new(deps: Deps, voter_notes: VoterNotes) -> anyhow::Result<ApiState> {
        let auth = &deps.settings.auth;
        let tokens = Arc::new(TokenKeys::from_settings(auth));
        let passwords = Passwords::from_settings(auth)?;
        let verifier = Verifier::new(tokens.clone(), deps.redis.clone(), deps.keys.clone(), deps.db.clone());
        let elections = ElectionCache::new(deps.db.clone());
        let sealer = Arc::new(deps.settings.sealing.sealer()?);
        let per_client = PerClient::new(&deps);
        let receipt_limit = PerAddress::per_minute(deps.settings.limits.receipts_per_client_per_minute);
        let receipt_key: Arc<[u8]> = Arc::from(deps.settings.sealing.receipt_key()?);
        let enrollment = EnrollmentKey::new(deps.settings.auth.enrollment_key()?);
        let record_key = Arc::new(deps.settings.record.verifier()?);
        Ok(ApiState(Arc::new(Shared {
            record_key,
            receipt_key,
            enrollment,
            deps,
            tokens,
            passwords,
            verifier,
            elections,
            sealer,
            per_client,
            receipt_limit,
            fences: Fences::default(),
            receipt_trees: Arc::new(ReceiptTrees::new(receipt_trees::ELECTIONS_KEPT)),
            voter_notes,
        })))
    }
}

impl std::ops::Deref for ApiState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl FromRef<ApiState> for Verifier {
    fn from_ref(state: &ApiState) -> Verifier {
        state.verifier.clone()
    }
}
