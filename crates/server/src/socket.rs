//! socket.io at `/ws/socket.io` (queue-and-events.md §7.1–7.3): authentication at CONNECT,
//! rooms, subscriptions, and live re-authorization when a user's access changes.
//!
//! Rooms: `user:<id>` and `workflows:shared` for every accepted socket, `admin` for
//! administrators, the queue id after `subscribe_queue`, a bulk-download id after
//! `subscribe_bulk_download`. The identity a socket authenticated with is kept on the socket
//! (its epoch included), so a later password change, demotion, deactivation or deletion can be
//! applied to open connections.

use crate::events::{user_room, ADMIN_ROOM, SHARED_WORKFLOWS_ROOM};
use crate::http::extract::{resolve_token, ApiErrorOr};
use crate::state::AppState;
use atelier_domain::{Identity, UserId};
use serde_json::Value;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use std::fmt;
use std::time::Duration;

/// Why a connection was refused (sent to the client as the CONNECT_ERROR message).
#[derive(Debug)]
pub struct Refused(&'static str);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The identity a socket connected as.
#[derive(Debug, Clone)]
pub struct SocketIdentity(pub Identity);

fn token_of(socket: &SocketRef, auth: Option<&Value>) -> Option<String> {
    if let Some(token) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(token.to_owned());
    }
    crate::http::extract::bearer_token(&socket.req_parts().headers).map(str::to_owned)
}

/// Registers the namespace handlers; call once, with the state that will serve requests.
pub fn register(io: &SocketIo, state: AppState) {
    let auth_state = state.clone();
    let authenticate = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let state = auth_state.clone();
        async move {
            let identity = if state.multiuser() {
                let token = token_of(&socket, auth.as_ref().ok())
                    .ok_or(Refused("Authentication required"))?;
                match resolve_token(&state, &token).await {
                    Ok(auth) => auth.identity,
                    Err(ApiErrorOr::Refused(_)) => return Err(Refused("Authentication failed")),
                    Err(ApiErrorOr::Error(_)) => return Err(Refused("Authentication unavailable")),
                }
            } else {
                Identity::system_admin()
            };
            socket.extensions.insert(SocketIdentity(identity));
            Ok::<(), Refused>(())
        }
    };
    let on_connect = move |socket: SocketRef| async move {
        let Some(SocketIdentity(identity)) = socket.extensions.get::<SocketIdentity>() else {
            let _ = socket.disconnect();
            return;
        };
        socket.join(user_room(identity.user_id.as_str()));
        socket.join(SHARED_WORKFLOWS_ROOM);
        if identity.is_admin() {
            socket.join(ADMIN_ROOM);
        }
        socket.on(
            "subscribe_queue",
            |socket: SocketRef, Data(body): Data<Value>| async move {
                let Some(SocketIdentity(identity)) = socket.extensions.get::<SocketIdentity>()
                else {
                    return;
                };
                if let Some(queue_id) = body.get("queue_id").and_then(Value::as_str) {
                    socket.join(queue_id.to_owned());
                    socket.join(user_room(identity.user_id.as_str()));
                    if identity.is_admin() {
                        socket.join(ADMIN_ROOM);
                    }
                }
            },
        );
        socket.on(
            "unsubscribe_queue",
            |socket: SocketRef, Data(body): Data<Value>| async move {
                if let Some(queue_id) = body.get("queue_id").and_then(Value::as_str) {
                    socket.leave(queue_id.to_owned());
                }
            },
        );
        socket.on(
            "subscribe_bulk_download",
            |socket: SocketRef, Data(body): Data<Value>| async move {
                if let Some(id) = body.get("bulk_download_id").and_then(Value::as_str) {
                    socket.join(id.to_owned());
                }
            },
        );
        socket.on(
            "unsubscribe_bulk_download",
            |socket: SocketRef, Data(body): Data<Value>| async move {
                if let Some(id) = body.get("bulk_download_id").and_then(Value::as_str) {
                    socket.leave(id.to_owned());
                }
            },
        );
    };
    io.ns("/", on_connect.with(authenticate));
    let _ = state;
}

/// Re-applies a user's current row to their open sockets: deleted or deactivated users are
/// disconnected, sockets from before a password change (older epoch) are disconnected, and
/// the `admin` room follows the role.
pub async fn recheck_user(state: &AppState, user_id: &UserId) {
    if !state.multiuser() {
        return;
    }
    let sockets = state.sockets.to(user_room(user_id.as_str())).sockets();
    if sockets.is_empty() {
        return;
    }
    let row = match state.store.get_user(user_id).await {
        Ok(row) => row,
        Err(err) => {
            tracing::warn!(error = %err, "could not re-check a user's sockets");
            return;
        }
    };
    for socket in sockets {
        let epoch = socket
            .extensions
            .get::<SocketIdentity>()
            .map(|SocketIdentity(i)| i.token_epoch);
        match &row {
            Some(user) if user.is_active && epoch == Some(user.token_epoch) => {
                if user.is_admin {
                    socket.join(ADMIN_ROOM);
                } else {
                    socket.leave(ADMIN_ROOM);
                }
                let identity = Identity::from_row(user, false);
                socket.extensions.insert(SocketIdentity(identity));
            }
            _ => {
                let _ = socket.disconnect();
            }
        }
    }
}

/// Re-checks every user with an open socket: covers changes made by `atelier user …` from the
/// shell, which the server does not otherwise hear about.
pub async fn sweep(state: &AppState) {
    let mut users: Vec<UserId> = state
        .sockets
        .sockets()
        .iter()
        .filter_map(|s| {
            s.extensions
                .get::<SocketIdentity>()
                .map(|SocketIdentity(i)| i.user_id)
        })
        .collect();
    users.sort();
    users.dedup();
    for user in users {
        recheck_user(state, &user).await;
    }
}

/// How often [`sweep`] runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
