//! The dispatcher's database reads, in a task of their own so the routing
//! loop never waits on PostgreSQL.
//!
//! The dispatcher sends a [`Lookup`] and holds the users it concerns
//! ([`super::routing`]); this task answers with what it [`Found`] for each
//! of them. A few lookups run at once; answers may come back in any order,
//! since each is applied at its place in each user's queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::{Audience, Published};
use crate::gateway::ready;
use crate::gateway::views::{self, View};
use crate::model::{Channel, Presence};

/// Lookups running at once.
const CONCURRENT: usize = 4;

/// A read the dispatcher needs; `id` names the marker in each user's queue.
#[derive(Debug)]
pub(super) enum Lookup {
    /// The channels `users` may view in a server after its roles,
    /// overrides or channels changed; each with their view before, to load
    /// the channels they gained (`except` is announced by the event itself).
    Views {
        id: u64,
        server_id: Uuid,
        users: Vec<(Uuid, View)>,
        except: Option<Uuid>,
    },
    /// The view of a server `user_id` just became a member of; with
    /// `created` (presences for it), the SERVER_CREATE too.
    Join {
        id: u64,
        server_id: Uuid,
        user_id: Uuid,
        created: Option<Option<Vec<Presence>>>,
    },
    /// Channels a user gained that the answer to a `Views` did not load.
    Channels {
        id: u64,
        server_id: Uuid,
        user_id: Uuid,
        ids: Vec<Uuid>,
    },
}

/// The answer to one lookup, per user.
#[derive(Debug)]
pub(super) struct Resolved {
    pub id: u64,
    pub found: Vec<(Uuid, Found)>,
}

/// What a lookup found for one user.
#[derive(Debug)]
pub(super) enum Found {
    /// The lookup failed (logged); nothing changes.
    Nothing,
    /// The user's new view of a server, and the channels of the server
    /// that were loaded for those gaining them.
    View {
        server_id: Uuid,
        view: View,
        except: Option<Uuid>,
        channels: Arc<HashMap<Uuid, Arc<Channel>>>,
    },
    /// The view of a server just joined (`None`: not a member after all),
    /// and the SERVER_CREATE to deliver, if asked.
    Joined {
        server_id: Uuid,
        view: Option<View>,
        created: Option<Arc<Published>>,
    },
    /// Channels to announce as created.
    Channels { server_id: Uuid, channels: Vec<Arc<Channel>> },
}

/// Answers lookups until the dispatcher goes or the gateway stops.
pub(super) async fn run(
    db: PgPool,
    mut lookups: mpsc::UnboundedReceiver<Lookup>,
    resolved: mpsc::UnboundedSender<Resolved>,
    shutdown: CancellationToken,
) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(answer) = running.next(), if !running.is_empty() => {
                if resolved.send(answer).is_err() {
                    break;
                }
            }
            lookup = lookups.recv(), if running.len() < CONCURRENT => match lookup {
                Some(lookup) => running.push(resolve(db.clone(), lookup)),
                None => break,
            },
        }
    }
}

async fn resolve(db: PgPool, lookup: Lookup) -> Resolved {
    match lookup {
        Lookup::Views { id, server_id, users, except } => {
            let ids: Vec<Uuid> = users.iter().map(|(u, _)| *u).collect();
            let mut fresh = match views::compute(&db, server_id, &ids).await {
                Ok(fresh) => fresh,
                Err(err) => {
                    tracing::warn!(error = ?err, "cannot recompute channel views");
                    return nothing(id, ids);
                }
            };
            let empty = View::new();
            let gained: HashSet<Uuid> = users
                .iter()
                .flat_map(|(u, old)| fresh.get(u).unwrap_or(&empty).difference(old).copied())
                .filter(|c| Some(*c) != except)
                .collect();
            let channels = if gained.is_empty() {
                HashMap::new()
            } else {
                load_channels(&db, &gained.into_iter().collect::<Vec<_>>()).await
            };
            let channels = Arc::new(channels);
            let found = users
                .into_iter()
                .map(|(u, _)| {
                    let view = fresh.remove(&u).unwrap_or_default();
                    let channels = channels.clone();
                    (u, Found::View { server_id, view, except, channels })
                })
                .collect();
            Resolved { id, found }
        }
        Lookup::Join { id, server_id, user_id, created } => {
            let view = match views::compute(&db, server_id, &[user_id]).await {
                Ok(mut fresh) => fresh.remove(&user_id),
                Err(err) => {
                    tracing::warn!(error = ?err, "cannot compute the view of a new member");
                    None
                }
            };
            let created = match (created, &view) {
                (Some(presences), Some(view)) => {
                    match ready::server_object(&db, server_id, user_id, view, presences).await {
                        Ok(object) => Some(Published::direct("SERVER_CREATE", Audience::User(user_id), &object)),
                        Err(err) => {
                            tracing::warn!(error = ?err, "cannot build SERVER_CREATE");
                            None
                        }
                    }
                }
                _ => None,
            };
            let found = Found::Joined { server_id, view, created };
            Resolved { id, found: vec![(user_id, found)] }
        }
        Lookup::Channels { id, server_id, user_id, ids } => {
            let channels = load_channels(&db, &ids).await.into_values().collect();
            Resolved {
                id,
                found: vec![(user_id, Found::Channels { server_id, channels })],
            }
        }
    }
}

fn nothing(id: u64, users: Vec<Uuid>) -> Resolved {
    Resolved {
        id,
        found: users.into_iter().map(|u| (u, Found::Nothing)).collect(),
    }
}

async fn load_channels(db: &PgPool, ids: &[Uuid]) -> HashMap<Uuid, Arc<Channel>> {
    match ready::channels_by_id(db, ids).await {
        Ok(channels) => channels.into_iter().map(|(id, channel)| (id, Arc::new(channel))).collect(),
        Err(err) => {
            tracing::warn!(error = ?err, "cannot load gained channels");
            HashMap::new()
        }
    }
}
