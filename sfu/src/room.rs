//! A room: the participants of one voice channel, and the wiring that lets each of
//! them hear all the others. Membership changes hold the room's lock, so two joins to
//! the same room are wired one after the other; the packet path never takes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use uuid::Uuid;

use crate::forward::Subscription;
use crate::participant::Participant;
use crate::signal::Offer;

/// The participants of one voice channel.
pub(crate) struct Room {
    pub id: Uuid,
    pub members: Mutex<Members>,
}

#[derive(Default)]
pub(crate) struct Members {
    /// The room was emptied and dropped from the SFU's map; a join that raced with
    /// that must look the room up again.
    pub closed: bool,
    pub list: Vec<Arc<Participant>>,
}

impl Room {
    pub(crate) fn new(id: Uuid) -> Self {
        Self {
            id,
            members: Mutex::new(Members::default()),
        }
    }
}

/// Lets `joined` and `member` hear each other. Returns the offer `member` must now
/// receive, if any (`joined`'s own offer comes later, with every slot at once).
pub(crate) async fn wire(member: &Participant, joined: &Participant, gather: Duration) -> Result<Option<Offer>, String> {
    // `joined` hears `member`.
    let (slot, epoch) = joined.assign_slot(member.peer).await?;
    member.fanout.add(Subscription {
        subscriber: joined.peer,
        slot,
        epoch,
        shared: Arc::clone(&joined.shared),
    });
    // `member` hears `joined`.
    let (slot, epoch) = member.assign_slot(joined.peer).await?;
    joined.fanout.add(Subscription {
        subscriber: member.peer,
        slot,
        epoch,
        shared: Arc::clone(&member.shared),
    });
    member.renegotiate(false, gather).await
}

/// Undoes [`wire`] for a participant who left. Returns the offer `member` must now
/// receive, if any.
pub(crate) async fn unwire(member: &Participant, gone: &Participant, gather: Duration) -> Result<Option<Offer>, String> {
    member.fanout.remove(gone.peer);
    gone.fanout.remove(member.peer);
    if member.release_slot(gone.peer).await {
        member.renegotiate(false, gather).await
    } else {
        Ok(None)
    }
}
