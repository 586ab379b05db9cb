use std::sync::Arc;

use axum::extract::FromRef;
use tally_common::Deps;
use tally_common::auth::{Passwords, TokenKeys, Verifier};

use crate::election_cache::ElectionCache;

#[derive(Clone)]
pub struct ApiState {
    pub deps: Deps,
    pub tokens: Arc<TokenKeys>,
    pub passwords: Passwords,
    pub verifier: Verifier,
    pub elections: ElectionCache,
}

impl ApiState {
    pub fn new(deps: Deps) -> anyhow::Result<ApiState> {
        let auth = &deps.settings.auth;
        let tokens = Arc::new(TokenKeys::from_settings(auth));
        let passwords = Passwords::new(auth.max_concurrent_hashes)?;
        let verifier =
            Verifier { tokens: tokens.clone(), redis: deps.redis.clone(), keys: deps.keys.clone() };
        let elections = ElectionCache::new(deps.db.clone());
        Ok(ApiState { deps, tokens, passwords, verifier, elections })
    }
}

impl FromRef<ApiState> for Verifier {
    fn from_ref(state: &ApiState) -> Verifier {
        state.verifier.clone()
    }
}
