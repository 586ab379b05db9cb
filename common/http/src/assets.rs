//! Browser code more than one role serves: the election record's checks
//! (WebCrypto over a receipt's audit path, Ed25519 where the browser has
//! it), used by the live page (broadcaster) and the voter page (api).

pub const RECORD_SCRIPT: &str = include_str!("../static/record.js");
