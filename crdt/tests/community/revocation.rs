//! Revoked delegations: ops dated at or after the revocation are out,
//! earlier ones stay, and only the delegation's own user can revoke it.

#![allow(clippy::unwrap_used)]

use together_crdt::{Command, OpStatus, Rejection};
use together_protocol::identity::Revocation;

use super::support::{T0, cast, community, create_channel, delegation};

fn nickname(user: uuid::Uuid, name: &str) -> Command {
    Command::SetNickname {
        user,
        nickname: Some(name.into()),
    }
}

#[test]
fn a_revocation_voids_later_ops_of_that_delegation_only() {
    let c = cast();
    let mut n = community(&c);
    let before = n.must(&c.member, nickname(c.member.id, "before"));
    let signed_under = delegation(&c.member, &n.public);
    let cut = n.clock + 1;
    let after = n.must(&c.member, nickname(c.member.id, "after"));
    assert!(after.body().time >= cut);
    assert!(n.is_valid(&after));

    // Someone else's signature over the member's delegation hash counts for
    // nothing (it verifies, but names another user).
    let forged = Revocation {
        user: c.outsider.public,
        delegation_hash: signed_under.hash(),
        issued: cut,
    }
    .sign(&c.outsider.key)
    .unwrap();
    n.resolver.add_revocation(forged).unwrap();
    assert!(n.is_valid(&after));

    // The member's own revocation voids what was signed from `cut` on.
    let own = Revocation::of(&signed_under, cut).sign(&c.member.key).unwrap();
    n.resolver.add_revocation(own).unwrap();
    assert!(n.is_valid(&before));
    assert_eq!(n.status(&after), Some(OpStatus::Invalid(Rejection::Revoked)));
    let json = String::from_utf8(n.json()).unwrap();
    assert!(json.contains("\"before\"") && !json.contains("\"after\""), "{json}");

    // Ops made later under the same delegation are out as they arrive;
    // a later revocation of the same delegation changes nothing.
    let later = n.forge(&c.member, nickname(c.member.id, "later"));
    assert_eq!(n.status(&later), Some(OpStatus::Invalid(Rejection::Revoked)));
    let again = Revocation::of(&signed_under, cut + 100).sign(&c.member.key).unwrap();
    n.resolver.add_revocation(again).unwrap();
    assert!(n.is_valid(&before));

    // Other users' ops under their own delegations are untouched.
    let other = n.must(&c.admin, nickname(c.admin.id, "admin"));
    assert!(n.is_valid(&other));

    // A revocation whose signature does not verify is refused.
    let mut bad = Revocation::of(&signed_under, cut).sign(&c.member.key).unwrap();
    bad.revocation.issued += 1;
    assert_eq!(n.resolver.add_revocation(bad), Err(Rejection::BadSignature));
}

#[test]
fn a_backdated_revocation_never_takes_others_history_with_it() {
    let c = cast();
    let mut n = community(&c);
    let mine = n.must(&c.member, nickname(c.member.id, "mine"));
    // The admin builds on it (local ops sit on the valid heads).
    let theirs = n.must(&c.admin, create_channel(77, "built-on"));
    assert!(theirs.body().parents.contains(&mine.id()));
    let tip = n.must(&c.member, nickname(c.member.id, "tip"));

    // The member revokes their delegation as of the community's founding,
    // before they even joined: only what nobody else built on falls.
    let backdated = Revocation::of(&delegation(&c.member, &n.public), T0)
        .sign(&c.member.key)
        .unwrap();
    n.resolver.add_revocation(backdated).unwrap();
    assert!(n.is_valid(&mine));
    assert!(n.is_valid(&theirs));
    assert_eq!(n.status(&tip), Some(OpStatus::Invalid(Rejection::Revoked)));
    let json = String::from_utf8(n.json()).unwrap();
    assert!(json.contains("built-on") && json.contains("\"mine\"") && !json.contains("\"tip\""), "{json}");
    assert!(json.contains(&c.member.id.to_string()), "the member's join stays: {json}");
}
