//! Who is calling: password hashing, access tokens and refresh tokens.

pub mod password;
pub mod refresh;
pub mod tokens;

pub use password::{HashError, Passwords};
pub use tokens::{Claims, TokenError, TokenKeys};
