//! Sign-up, sessions and the caller's profile.

pub mod attempts;
pub mod me;
pub mod session;
pub mod signup;
