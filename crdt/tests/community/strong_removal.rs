//! Strong removal: ops concurrent with the loss of a permission they needed
//! are invalid, and so is everything built on them; mutual removals are
//! settled by rank, never by hash.

use together_crdt::{Command, Op, OpStatus, Rejection};
use together_protocol::permissions::Permissions;

use super::support::*;

/// Every node gets every op, and all agree byte for byte; so does a fresh
/// node fed everything in reverse.
fn converge(nodes: &mut [&mut Node]) -> Vec<u8> {
    for _ in 0..2 {
        for i in 0..nodes.len() {
            for j in 0..nodes.len() {
                if i != j {
                    let ops: Vec<Op> = nodes[j]
                        .resolver
                        .ops_since(&nodes[i].resolver.heads())
                        .into_iter()
                        .cloned()
                        .collect();
                    nodes[i].receive(&ops);
                }
            }
        }
    }
    let json = nodes[0].json();
    for n in nodes.iter() {
        assert_eq!(n.json(), json);
    }
    let mut all: Vec<Op> = nodes[0].resolver.ops().cloned().collect();
    all.reverse();
    let mut fresh = Node::new(250, nodes[0].community());
    fresh.receive(&all);
    assert_eq!(fresh.json(), json);
    json
}

fn removed(n: &Node, op: &Op) -> bool {
    n.status(op) == Some(OpStatus::Invalid(Rejection::RemovedConcurrently))
}

#[test]
fn an_admins_acts_concurrent_with_their_demotion_are_void() {
    let c = cast();
    let mut a = community(&c);
    let mut b = replica(101, &a);
    // On node a the owner demotes the admin; on node b, not knowing, the
    // admin bans the member, creates a channel and renames itself.
    let demote = a.must(&c.owner, set_roles(&c.admin, &[]));
    let ban = b.must(
        &c.admin,
        Command::Ban {
            user: c.member.id,
            reason: None,
        },
    );
    let chan = b.must(&c.admin, create_channel(7, "admins-only"));
    let nick = b.must(
        &c.admin,
        Command::SetNickname {
            user: c.admin.id,
            nickname: Some("boss".into()),
        },
    );
    // Someone on node b builds on the admin's ops before the news arrives.
    let built_on = b.must(
        &c.mod1,
        Command::UpdateChannel {
            id: channel_id(7),
            name: Some("renamed".into()),
            parent: None,
            topic: None,
            position: None,
        },
    );
    assert!(b.is_valid(&ban) && b.is_valid(&chan) && b.is_valid(&built_on));
    converge(&mut [&mut a, &mut b]);
    for n in [&a, &b] {
        assert!(n.is_valid(&demote));
        assert!(removed(n, &ban), "{:?}", n.status(&ban));
        // Built on the void ban, the channel goes with it.
        assert_eq!(
            n.status(&chan),
            Some(OpStatus::Invalid(Rejection::InvalidParent))
        );
        // The nickname needed only CHANGE_NICKNAME, which @everyone still gives;
        // but it was built on the channel op, so it goes with it.
        assert_eq!(
            n.status(&nick),
            Some(OpStatus::Invalid(Rejection::InvalidParent))
        );
        assert_eq!(
            n.status(&built_on),
            Some(OpStatus::Invalid(Rejection::InvalidParent))
        );
        let p = n.resolver.projection();
        assert!(p.members.iter().any(|m| m.user_id == c.member.id));
        assert!(p.bans.is_empty());
        assert!(p.channels.iter().all(|ch| ch.id != channel_id(7)));
    }
    // Node b's actor has invalid ops now: it moves to a fresh one and the
    // moderator's intent can be re-issued.
    assert!(!b.resolver.actor_is_clean(&b.actor));
    let again = b.must(&c.mod1, create_channel(8, "again"));
    assert!(b.is_valid(&again));
    converge(&mut [&mut a, &mut b]);
    assert!(a.is_valid(&again));
}

#[test]
fn concurrent_ops_that_did_not_need_the_lost_permission_stay() {
    let c = cast();
    let mut a = community(&c);
    let mut b = replica(101, &a);
    let demote = a.must(&c.owner, set_roles(&c.admin, &[]));
    let nick = b.must(
        &c.admin,
        Command::SetNickname {
            user: c.admin.id,
            nickname: Some("still me".into()),
        },
    );
    converge(&mut [&mut a, &mut b]);
    assert!(a.is_valid(&demote) && a.is_valid(&nick));
}

#[test]
fn ban_concurrent_with_a_join_keeps_the_user_out() {
    let c = cast();
    let mut a = community(&c);
    let mut b = replica(101, &a);
    let ban = a.must(
        &c.mod1,
        Command::Ban {
            user: c.outsider.id,
            reason: None,
        },
    );
    let join = b.must(&c.outsider, Command::Join { invite: None });
    let hello = b.must(
        &c.outsider,
        Command::SetNickname {
            user: c.outsider.id,
            nickname: Some("hi".into()),
        },
    );
    converge(&mut [&mut a, &mut b]);
    assert!(a.is_valid(&ban));
    assert!(removed(&a, &join));
    assert_eq!(
        a.status(&hello),
        Some(OpStatus::Invalid(Rejection::InvalidParent))
    );
    assert!(
        a.resolver
            .projection()
            .members
            .iter()
            .all(|m| m.user_id != c.outsider.id)
    );
}

#[test]
fn kick_voids_the_kicked_members_concurrent_ops() {
    let c = cast();
    let mut a = community(&c);
    let mut b = replica(101, &a);
    let kick = a.must(&c.mod1, Command::Kick { user: c.member.id });
    let invite = b.must(
        &c.member,
        Command::CreateInvite {
            code: "late".into(),
            channel: None,
            max_uses: None,
            expires_at: None,
        },
    );
    converge(&mut [&mut a, &mut b]);
    assert!(a.is_valid(&kick));
    assert!(removed(&a, &invite));
    assert!(a.resolver.projection().invites.is_empty());
}

/// Two members with MANAGE_ROLES each strip the role that gives the other
/// MANAGE_ROLES, concurrently. `rank1` and `rank2` are their positions.
fn mutual_role_edits(rank1: i32, rank2: i32) -> (bool, bool) {
    let c = cast();
    let (u1, u2) = (&c.mod1, &c.mod2);
    let (mut a, _) = Node::found(100, &c.owner, genesis("Mutual", true));
    a.must(
        &c.owner,
        create_role(10, "rank1", Permissions::empty(), rank1),
    );
    a.must(
        &c.owner,
        create_role(11, "rank2", Permissions::empty(), rank2),
    );
    a.must(
        &c.owner,
        create_role(12, "keys1", Permissions::MANAGE_ROLES, 2),
    );
    a.must(
        &c.owner,
        create_role(13, "keys2", Permissions::MANAGE_ROLES, 3),
    );
    for u in [u1, u2] {
        a.must(u, Command::Join { invite: None });
    }
    a.must(&c.owner, set_roles(u1, &[role_id(10), role_id(12)]));
    a.must(&c.owner, set_roles(u2, &[role_id(11), role_id(13)]));
    let mut b = replica(101, &a);
    let strip = |role| Command::UpdateRole {
        id: role_id(role),
        name: None,
        permissions: Some(Permissions::empty()),
        color: None,
        hoist: None,
        mentionable: None,
        position: None,
    };
    let by1 = a.must(u1, strip(13));
    let by2 = b.must(u2, strip(12));
    converge(&mut [&mut a, &mut b]);
    (a.is_valid(&by1), a.is_valid(&by2))
}

#[test]
fn concurrent_mutual_removals_higher_rank_wins() {
    assert_eq!(mutual_role_edits(7, 6), (true, false));
    assert_eq!(mutual_role_edits(6, 7), (false, true));
}

#[test]
fn concurrent_mutual_removals_at_equal_rank_both_apply() {
    assert_eq!(mutual_role_edits(6, 6), (true, true));
}

#[test]
fn a_void_removal_does_not_void_anything() {
    // The owner demotes the admin; concurrently the admin demotes a
    // moderator, who concurrently kicks the member. The admin's act is void,
    // so the moderator kept its role and the kick stands.
    let c = cast();
    let mut a = community(&c);
    let mut b = replica(101, &a);
    let mut m = replica(102, &a);
    let demote_admin = a.must(&c.owner, set_roles(&c.admin, &[]));
    let demote_mod = b.must(&c.admin, set_roles(&c.mod1, &[]));
    let kick = m.must(&c.mod1, Command::Kick { user: c.member.id });
    converge(&mut [&mut a, &mut b, &mut m]);
    assert!(a.is_valid(&demote_admin));
    assert!(removed(&a, &demote_mod));
    assert!(a.is_valid(&kick));
    let mod_roles = a
        .resolver
        .projection()
        .member_roles
        .iter()
        .filter(|r| r.user_id == c.mod1.id)
        .count();
    assert_eq!(mod_roles, 1);
}

#[test]
fn a_late_removal_rebuilds_the_document_once_and_normal_arrivals_never() {
    let c = cast();
    let mut a = community(&c);
    let mut b = replica(101, &a);
    assert_eq!(b.resolver.rebuilds(), 0);
    let demote = a.must(&c.owner, set_roles(&c.mod1, &[]));
    // The owner's channel stays valid beside the demotion, so the valid set
    // is not the demotion's past alone and the document is rebuilt.
    b.must(&c.owner, create_channel(6, "y"));
    b.must(&c.mod1, create_channel(5, "x"));
    b.must(
        &c.member,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("n".into()),
        },
    );
    assert_eq!(b.resolver.rebuilds(), 0);
    b.receive(std::slice::from_ref(&demote));
    assert_eq!(b.resolver.rebuilds(), 1);
    let channels = &b.resolver.projection().channels;
    assert!(channels.iter().all(|ch| ch.id != channel_id(5)));
    assert!(channels.iter().any(|ch| ch.id == channel_id(6)));
}
