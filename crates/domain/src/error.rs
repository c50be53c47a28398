//! The domain's error type. Each variant carries the user-facing message of the contract,
//! so the server maps it to a status without rewording it.

use thiserror::Error;

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// A password that the configured policy refuses (auth.md §9.5).
    #[error("{0}")]
    PasswordPolicy(String),
    /// An email address that neither the validator nor the special-domain fallback accepts.
    #[error("{0}")]
    InvalidEmail(String),
}
