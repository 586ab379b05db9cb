//! The `Authorization` header as the extractors read it: no input but a
//! token signed with the configured key may name a user.
#![no_main]

use std::sync::LazyLock;

use axum::http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tally_platform::Settings;
use tally_platform::auth::TokenKeys;
use tally_http::auth::user_from_header;

static KEYS: LazyLock<TokenKeys> = LazyLock::new(|| TokenKeys::from_settings(&Settings::default().auth));

fuzz_target!(|data: &[u8]| {
    let Ok(header) = HeaderValue::from_bytes(data) else { return };
    assert!(user_from_header(&KEYS, Some(&header)).is_err(), "a forged header was accepted");
});
