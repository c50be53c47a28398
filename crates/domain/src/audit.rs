//! Audit events: authentication and administrative actions that an administrator may need to
//! reconstruct later. Atelier's extension (InvokeAI lists an audit log as "planned").

use serde::{Deserialize, Serialize};
use std::fmt;

/// What happened. The string form is stored in the database and shown by the API and CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    LoginSucceeded,
    LoginFailed,
    LoginThrottled,
    Setup,
    UserCreated,
    UserUpdated,
    UserDeleted,
    UserPromoted,
    UserDemoted,
    UserActivated,
    UserDeactivated,
    PasswordReset,
    PasswordChanged,
    ContentReassigned,
}

impl AuditAction {
    pub const ALL: [AuditAction; 14] = [
        Self::LoginSucceeded,
        Self::LoginFailed,
        Self::LoginThrottled,
        Self::Setup,
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserDeleted,
        Self::UserPromoted,
        Self::UserDemoted,
        Self::UserActivated,
        Self::UserDeactivated,
        Self::PasswordReset,
        Self::PasswordChanged,
        Self::ContentReassigned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginSucceeded => "login_succeeded",
            Self::LoginFailed => "login_failed",
            Self::LoginThrottled => "login_throttled",
            Self::Setup => "setup",
            Self::UserCreated => "user_created",
            Self::UserUpdated => "user_updated",
            Self::UserDeleted => "user_deleted",
            Self::UserPromoted => "user_promoted",
            Self::UserDemoted => "user_demoted",
            Self::UserActivated => "user_activated",
            Self::UserDeactivated => "user_deactivated",
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::ContentReassigned => "content_reassigned",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == value)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did it: a user, the command line, or an anonymous client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User { user_id: String, email: String },
    Cli,
    Anonymous,
}

/// One event to record. `subject` names the account acted upon (the email tried, for a failed
/// login), `client` the client address when the event came over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub action: AuditAction,
    pub actor: Actor,
    pub subject_user_id: Option<String>,
    pub subject_email: Option<String>,
    pub client: Option<String>,
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn new(action: AuditAction, actor: Actor) -> Self {
        Self {
            action,
            actor,
            subject_user_id: None,
            subject_email: None,
            client: None,
            detail: None,
        }
    }

    pub fn subject(mut self, user_id: Option<&str>, email: &str) -> Self {
        self.subject_user_id = user_id.map(str::to_owned);
        self.subject_email = Some(email.to_owned());
        self
    }

    pub fn client(mut self, client: Option<String>) -> Self {
        self.client = client;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_their_names() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::parse("nope"), None);
    }
}
