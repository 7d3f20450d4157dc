//! Revoked delegations: ops dated at or after the revocation are out,
//! earlier ones stay, and only the delegation's own user can revoke it.

#![allow(clippy::unwrap_used)]

use together_crdt::{Command, OpStatus, Rejection};
use together_protocol::identity::Revocation;

use super::support::{cast, community, delegation};

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
