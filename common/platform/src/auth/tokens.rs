//! Access tokens: short-lived JWTs signed with HS256 under a key id, so
//! keys can rotate without logging anyone out.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::AuthSettings;
use tally_domain::citizen::Role;

/// What an access token asserts. `prov` and `dob` are the registry facts
/// the vote path needs, so casting a ballot needs no database read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub sid: Uuid,
    pub role: Role,
    pub prov: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub dob: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token invalid")]
    Invalid(&'static str),
}

impl TokenError {
    /// A bounded label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            TokenError::Invalid(reason) => reason,
        }
    }
}

pub struct TokenKeys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    pub access_ttl_secs: u64,
}

impl TokenKeys {
    pub fn from_settings(settings: &AuthSettings) -> TokenKeys {
        let verifying = settings
            .keys
            .iter()
            .map(|(kid, key)| (kid.clone(), DecodingKey::from_secret(key.expose().as_bytes())))
            .collect();
        let signing_secret =
            settings.keys.get(&settings.signing_key_id).map(|k| k.expose()).unwrap_or_default();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = settings.clock_skew_secs;
        TokenKeys {
            signing_kid: settings.signing_key_id.clone(),
            signing: EncodingKey::from_secret(signing_secret.as_bytes()),
            verifying,
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            access_ttl_secs: settings.access_ttl_secs,
        }
    }

    /// Claims for a new access token, valid from now for the configured TTL.
    pub fn claims(
        &self,
        citizen_id: i64,
        session: Uuid,
        role: Role,
        province: &str,
        dob: time::Date,
    ) -> Claims {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Claims {
            sub: citizen_id.to_string(),
            sid: session,
            role,
            prov: province.to_string(),
            dob: dob.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.access_ttl_secs as i64,
        }
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        Ok(encode(&header, claims, &self.signing)?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Invalid("malformed"))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid("algorithm"));
        }
        let kid = header.kid.ok_or(TokenError::Invalid("no_key_id"))?;
        let key = self.verifying.get(&kid).ok_or(TokenError::Invalid("unknown_key_id"))?;
        decode::<Claims>(token, key, &self.validation).map(|data| data.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("signature"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("issuer"),
                ErrorKind::InvalidAudience => TokenError::Invalid("audience"),
                ErrorKind::InvalidAlgorithm => TokenError::Invalid("algorithm"),
                _ => TokenError::Invalid("malformed"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use base64::Engine;
    use tally_domain::secret::Secret;

    fn keys() -> TokenKeys {
        TokenKeys::from_settings(&Settings::default().auth)
    }

    fn claims(keys: &TokenKeys) -> Claims {
        keys.claims(42, Uuid::new_v4(), Role::Voter, "Capital", time::macros::date!(1990 - 01 - 01))
    }

    #[test]
    fn a_signed_token_verifies() {
        let keys = keys();
        let c = claims(&keys);
        assert_eq!(keys.verify(&keys.sign(&c).unwrap()), Ok(c));
    }

    #[test]
    fn alg_none_is_refused() {
        let keys = keys();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = serde_json::to_string(&claims(&keys)).unwrap();
        let token = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT","kid":"dev"}"#), b64(&body));
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn tokens_from_a_rotated_key_verify_until_it_is_removed() {
        let mut settings = Settings::default().auth;
        let old = TokenKeys::from_settings(&settings);
        let token = old.sign(&claims(&old)).unwrap();
        settings.keys.insert("k2".into(), Secret::new("a-new-key-for-signing-from-now-on-000"));
        settings.signing_key_id = "k2".into();
        let both = TokenKeys::from_settings(&settings);
        assert!(both.verify(&token).is_ok(), "old tokens still verify");
        settings.keys.remove("dev");
        let new_only = TokenKeys::from_settings(&settings);
        assert_eq!(new_only.verify(&token), Err(TokenError::Invalid("unknown_key_id")));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_is_never_a_valid_token(text in ".{0,300}") {
            proptest::prop_assert!(keys().verify(&text).is_err());
        }

        #[test]
        fn changing_any_character_of_a_token_invalidates_it(at in 0usize..400, with in proptest::char::range('+', 'z')) {
            let keys = keys();
            let token = keys.sign(&claims(&keys)).unwrap();
            let at = at % token.len();
            let mut changed: Vec<char> = token.chars().collect();
            proptest::prop_assume!(changed[at] != with);
            changed[at] = with;
            let changed: String = changed.into_iter().collect();
            // Base64url's last character can carry padding bits that decode
            // to the same bytes; only a change the decoder sees must fail.
            if keys.verify(&changed).is_ok() {
                proptest::prop_assert_eq!(keys.verify(&changed), keys.verify(&token));
            }
        }
    }
}
