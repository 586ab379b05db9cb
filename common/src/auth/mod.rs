//! Who is calling: enrollment codes, password hashing, access tokens,
//! refresh tokens, and the extractors protected routes use.

pub mod enrollment;
pub mod extract;
pub mod password;
pub mod refresh;
pub mod tokens;

pub use extract::{AdminUser, AuthUser, SignedUser, Verifier};
pub use password::Passwords;
pub use tokens::{Claims, TokenError, TokenKeys};
