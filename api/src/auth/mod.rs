//! Sign-up, sessions and the caller's profile.

pub mod me;
pub mod session;
pub mod signup;
