//! Atelier's domain: identities, users, the email and password rules of the InvokeAI
//! multi-user contract, and audit events. Pure logic only: nothing here touches a file, a
//! socket or a database, so every rule is unit-testable on its own.

pub mod audit;
pub mod content;
pub mod email;
pub mod error;
pub mod ids;
pub mod library;
pub mod password;
pub mod queue;
pub mod user;

pub use error::{DomainError, Result};
pub use ids::UserId;
pub use user::{Identity, User, SYSTEM_EMAIL, SYSTEM_USER_ID};
