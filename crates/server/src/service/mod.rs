//! Services: one function per use case. A service checks permissions and rules, calls the
//! store, records audit events and returns domain values; it never sees HTTP types. The
//! current time is an argument, so tests and the throttle can reason about it.

pub mod audit;
pub mod auth;
pub mod boards;
pub mod compute;
pub mod content;
pub mod downloads;
pub mod generate;
pub mod generation;
pub mod images;
pub mod models;
pub mod queue;
pub mod style_presets;
pub mod tensors;
pub mod throttle;
pub mod users;
pub mod worker;
pub mod workflows;

use atelier_domain::audit::Actor;
use atelier_domain::Identity;

/// Proof that the caller is an administrator: built only by the admin guards or by the
/// command line (which runs with the operator's shell rights), so admin-only services cannot
/// be reached without one.
#[derive(Debug, Clone)]
pub struct AdminProof {
    actor: Actor,
    caller: Option<Identity>,
}

impl AdminProof {
    pub(crate) fn from_admin(identity: &Identity) -> Self {
        debug_assert!(identity.is_admin());
        Self {
            actor: actor_of(identity),
            caller: Some(identity.clone()),
        }
    }

    /// The operator at the shell (`atelier user …`).
    pub fn command_line() -> Self {
        Self {
            actor: Actor::Cli,
            caller: None,
        }
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn caller(&self) -> Option<&Identity> {
        self.caller.as_ref()
    }
}

pub fn actor_of(identity: &Identity) -> Actor {
    Actor::User {
        user_id: identity.user_id.to_string(),
        email: identity.email.clone(),
    }
}
