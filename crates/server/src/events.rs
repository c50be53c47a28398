//! Real-time events: what happened, who may hear of it, and the bus that carries it.
//!
//! Services publish an [`Event`] after their write commits (scale-out.md §5). The in-process
//! bus routes each event to socket.io rooms (`user:<id>`, `admin`, `workflows:shared`, a
//! bulk-download id) according to queue-and-events.md §7.4; a PostgreSQL-notification bus can
//! replace it later without touching services, because routing lives in [`Event::routes`].

use serde_json::{json, Value};
use socketioxide::SocketIo;
use std::fmt;

/// Something clients may want to hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    WorkflowCreated {
        workflow_id: String,
        user_id: String,
        is_public: bool,
    },
    WorkflowUpdated {
        workflow_id: String,
        user_id: String,
        old_is_public: bool,
        new_is_public: bool,
    },
    WorkflowDeleted {
        workflow_id: String,
        user_id: String,
        is_public: bool,
    },
    BulkDownload {
        stage: BulkStage,
        bulk_download_id: String,
        item_id: String,
        item_name: String,
        user_id: String,
        error: Option<String>,
    },
    /// A queue event with its owner: the full payload goes to the owner and admins, the
    /// redacted `companion` (if any) to the queue room's other subscribers (§7.4).
    Queue {
        name: &'static str,
        queue_id: String,
        owner: String,
        payload: Value,
        companion: Option<Value>,
    },
    /// An event for the queue item's owner alone (`invocation_progress`, §7.4).
    ToOwner {
        name: &'static str,
        owner: String,
        payload: Value,
    },
    /// An event for administrators alone: model installs and downloads (models.md §6), whose
    /// payloads carry server paths and signed URLs.
    Admin { name: &'static str, payload: Value },
    /// `queue_items_canceled` / `queue_items_retried`: each owner hears only their own ids,
    /// admins hear everything, other subscribers hear that something happened (§7.4).
    QueueItemsByUser {
        name: &'static str,
        /// `canceled` or `retried`: names the payload's keys.
        verb: &'static str,
        queue_id: String,
        by_user: std::collections::BTreeMap<String, Vec<i64>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkStage {
    Started,
    Complete,
    Error,
}

/// One emit: an event name, its payload, and the rooms it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub rooms: Vec<String>,
    /// Sockets in these rooms are skipped.
    pub except: Vec<String>,
    pub name: &'static str,
    pub payload: Value,
}

pub const ADMIN_ROOM: &str = "admin";
pub const SHARED_WORKFLOWS_ROOM: &str = "workflows:shared";

pub fn user_room(user_id: &str) -> String {
    format!("user:{user_id}")
}

impl Event {
    /// Where the event goes and what each audience receives (queue-and-events.md §7.4).
    pub fn routes(&self, multiuser: bool, now: i64) -> Vec<Emit> {
        let workflow_rooms = |owner: &str, public: bool| {
            if !multiuser {
                return vec![ADMIN_ROOM.to_owned()];
            }
            let mut rooms = vec![user_room(owner), ADMIN_ROOM.to_owned()];
            if public {
                rooms.push(SHARED_WORKFLOWS_ROOM.to_owned());
            }
            rooms
        };
        match self {
            Self::WorkflowCreated {
                workflow_id,
                user_id,
                is_public,
            } => vec![Emit {
                except: Vec::new(),
                rooms: workflow_rooms(user_id, *is_public),
                name: "workflow_created",
                payload: json!({"workflow_id": workflow_id, "user_id": user_id, "is_public": is_public, "timestamp": now}),
            }],
            Self::WorkflowDeleted {
                workflow_id,
                user_id,
                is_public,
            } => vec![Emit {
                except: Vec::new(),
                rooms: workflow_rooms(user_id, *is_public),
                name: "workflow_deleted",
                payload: json!({"workflow_id": workflow_id, "user_id": user_id, "is_public": is_public, "timestamp": now}),
            }],
            Self::WorkflowUpdated {
                workflow_id,
                user_id,
                old_is_public,
                new_is_public,
            } => {
                let updated = json!({"workflow_id": workflow_id, "user_id": user_id,
                    "old_is_public": old_is_public, "new_is_public": new_is_public, "timestamp": now});
                if multiuser && *old_is_public && !*new_is_public {
                    // Public → private: the owner and admins hear the update; everyone else
                    // learns only that their access ended.
                    vec![
                        Emit {
                            except: Vec::new(),
                            rooms: workflow_rooms(user_id, false),
                            name: "workflow_updated",
                            payload: updated,
                        },
                        Emit {
                            except: Vec::new(),
                            rooms: vec![SHARED_WORKFLOWS_ROOM.to_owned()],
                            name: "workflow_access_revoked",
                            payload: json!({"workflow_id": workflow_id, "user_id": user_id, "timestamp": now}),
                        },
                    ]
                } else {
                    vec![Emit {
                        except: Vec::new(),
                        rooms: workflow_rooms(user_id, *new_is_public),
                        name: "workflow_updated",
                        payload: updated,
                    }]
                }
            }
            Self::Queue {
                name,
                queue_id,
                owner,
                payload,
                companion,
            } => {
                let mut payload = payload.clone();
                payload["timestamp"] = json!(now);
                if owner.is_empty() {
                    // No identity: everyone subscribed to the queue hears it.
                    return vec![Emit {
                        except: Vec::new(),
                        rooms: vec![queue_id.clone()],
                        name,
                        payload,
                    }];
                }
                if !multiuser {
                    return vec![Emit {
                        except: Vec::new(),
                        rooms: vec![ADMIN_ROOM.to_owned()],
                        name,
                        payload,
                    }];
                }
                let mut emits = vec![Emit {
                    except: Vec::new(),
                    rooms: vec![user_room(owner), ADMIN_ROOM.to_owned()],
                    name,
                    payload,
                }];
                if let Some(companion) = companion {
                    let mut companion = companion.clone();
                    companion["timestamp"] = json!(now);
                    emits.push(Emit {
                        except: vec![user_room(owner), ADMIN_ROOM.to_owned()],
                        rooms: vec![queue_id.clone()],
                        name,
                        payload: companion,
                    });
                }
                emits
            }
            Self::ToOwner {
                name,
                owner,
                payload,
            } => {
                let mut payload = payload.clone();
                payload["timestamp"] = json!(now);
                let room = if multiuser {
                    user_room(owner)
                } else {
                    ADMIN_ROOM.to_owned()
                };
                vec![Emit {
                    except: Vec::new(),
                    rooms: vec![room],
                    name,
                    payload,
                }]
            }
            Self::Admin { name, payload } => {
                let mut payload = payload.clone();
                payload["timestamp"] = json!(now);
                // Single-user sockets are all in the admin room too.
                vec![Emit {
                    except: Vec::new(),
                    rooms: vec![ADMIN_ROOM.to_owned()],
                    name,
                    payload,
                }]
            }
            Self::QueueItemsByUser {
                name,
                verb,
                queue_id,
                by_user,
            } => {
                let ids_key = format!("{verb}_item_ids");
                let map_key = format!("{verb}_item_ids_by_user");
                let payload = |ids: Vec<i64>, users: Vec<&String>, map: Value| {
                    let mut p = json!({"queue_id": queue_id, "user_ids": users, "timestamp": now});
                    p[&ids_key] = json!(ids);
                    p[&map_key] = map;
                    p
                };
                let all_ids: Vec<i64> = by_user.values().flatten().copied().collect();
                let full = payload(all_ids, by_user.keys().collect(), json!(by_user));
                if !multiuser {
                    return vec![Emit {
                        except: Vec::new(),
                        rooms: vec![ADMIN_ROOM.to_owned()],
                        name,
                        payload: full,
                    }];
                }
                let mut emits: Vec<Emit> = by_user
                    .iter()
                    .map(|(owner, ids)| Emit {
                        except: vec![ADMIN_ROOM.to_owned()],
                        rooms: vec![user_room(owner)],
                        name,
                        payload: payload(ids.clone(), vec![owner], json!({ owner.as_str(): ids })),
                    })
                    .collect();
                emits.push(Emit {
                    except: Vec::new(),
                    rooms: vec![ADMIN_ROOM.to_owned()],
                    name,
                    payload: full,
                });
                let mut except: Vec<String> = by_user.keys().map(|o| user_room(o)).collect();
                except.push(ADMIN_ROOM.to_owned());
                emits.push(Emit {
                    except,
                    rooms: vec![queue_id.clone()],
                    name,
                    payload: payload(Vec::new(), Vec::new(), json!({})),
                });
                emits
            }
            Self::BulkDownload {
                stage,
                bulk_download_id,
                item_id,
                item_name,
                user_id,
                error,
            } => {
                let name = match stage {
                    BulkStage::Started => "bulk_download_started",
                    BulkStage::Complete => "bulk_download_complete",
                    BulkStage::Error => "bulk_download_error",
                };
                let mut payload = json!({"bulk_download_id": bulk_download_id, "bulk_download_item_id": item_id,
                    "bulk_download_item_name": item_name, "user_id": user_id, "timestamp": now});
                if let Some(error) = error {
                    payload["error"] = json!(error);
                }
                if user_id == atelier_domain::SYSTEM_USER_ID {
                    vec![Emit {
                        except: Vec::new(),
                        rooms: vec![bulk_download_id.clone()],
                        name,
                        payload,
                    }]
                } else {
                    // Two emits, as the reference does: a socket in both rooms hears it twice.
                    vec![
                        Emit {
                            except: Vec::new(),
                            rooms: vec![user_room(user_id)],
                            name,
                            payload: payload.clone(),
                        },
                        Emit {
                            except: Vec::new(),
                            rooms: vec![ADMIN_ROOM.to_owned()],
                            name,
                            payload,
                        },
                    ]
                }
            }
        }
    }
}

/// Carries events to listeners. Publish only after the change is committed.
pub trait EventBus: Send + Sync + fmt::Debug {
    fn publish(&self, event: Event);
}

/// The single-process bus: straight to this server's sockets.
#[derive(Clone)]
pub struct SocketBus {
    io: SocketIo,
    multiuser: bool,
}

impl fmt::Debug for SocketBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketBus")
            .field("multiuser", &self.multiuser)
            .finish()
    }
}

impl SocketBus {
    pub fn new(io: SocketIo, multiuser: bool) -> Self {
        Self { io, multiuser }
    }
}

impl EventBus for SocketBus {
    fn publish(&self, event: Event) {
        let io = self.io.clone();
        let emits = event.routes(self.multiuser, chrono::Utc::now().timestamp());
        tokio::spawn(async move {
            for emit in emits {
                if let Err(err) = io
                    .to(emit.rooms.clone())
                    .except(emit.except.clone())
                    .emit(emit.name, &emit.payload)
                    .await
                {
                    tracing::debug!(event = emit.name, error = %err, "event not delivered");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_goes_to_the_owner_alone() {
        let progress = Event::ToOwner {
            name: "invocation_progress",
            owner: "u".into(),
            payload: json!({"percentage": 0.5}),
        };
        let emits = progress.routes(true, 7);
        assert_eq!(emits.len(), 1);
        assert_eq!(emits[0].rooms, ["user:u"], "not even admins");
        assert_eq!(emits[0].payload["timestamp"], 7);
        assert_eq!(progress.routes(false, 7)[0].rooms, ["admin"]);
    }

    #[test]
    fn model_install_events_reach_admins_alone() {
        let event = Event::Admin {
            name: "model_install_started",
            payload: json!({"id": 0, "source": {"type": "local"}}),
        };
        for multiuser in [true, false] {
            let emits = event.routes(multiuser, 9);
            assert_eq!(emits.len(), 1);
            assert_eq!(emits[0].rooms, ["admin"]);
            assert!(emits[0].except.is_empty());
            assert_eq!(emits[0].payload["timestamp"], 9);
        }
    }

    #[test]
    fn workflow_routing() {
        let made = Event::WorkflowCreated {
            workflow_id: "w".into(),
            user_id: "u".into(),
            is_public: true,
        };
        assert_eq!(
            made.routes(true, 1)[0].rooms,
            ["user:u", "admin", "workflows:shared"]
        );
        assert_eq!(made.routes(false, 1)[0].rooms, ["admin"]);
        let unshared = Event::WorkflowUpdated {
            workflow_id: "w".into(),
            user_id: "u".into(),
            old_is_public: true,
            new_is_public: false,
        };
        let emits = unshared.routes(true, 1);
        assert_eq!(
            emits.iter().map(|e| e.name).collect::<Vec<_>>(),
            ["workflow_updated", "workflow_access_revoked"]
        );
        assert_eq!(emits[0].rooms, ["user:u", "admin"]);
        assert_eq!(emits[1].rooms, ["workflows:shared"]);
    }

    #[test]
    fn bulk_download_routing() {
        let event = |user: &str| Event::BulkDownload {
            stage: BulkStage::Complete,
            bulk_download_id: "b".into(),
            item_id: "i".into(),
            item_name: "i.zip".into(),
            user_id: user.into(),
            error: None,
        };
        let emits = event("u").routes(true, 1);
        assert_eq!(emits.len(), 2);
        assert_eq!(
            (emits[0].rooms.clone(), emits[1].rooms.clone()),
            (vec!["user:u".to_owned()], vec!["admin".to_owned()])
        );
        assert_eq!(event("system").routes(false, 1)[0].rooms, ["b"]);
    }
}
