//! The store: pending parents, duplicates, envelopes, equivocation,
//! revocation, wire form and sync helpers.

use together_crdt::{Actor, DEFAULT_MAX_PENDING};
use together_crdt::{Added, Command, MAX_OP_BYTES, Op, OpError, OpStatus, Rejection, Resolver};
use together_protocol::identity::{NodePublicKey, Revocation, SignedEvent};

use super::support::*;

fn history() -> (Cast, Node, Vec<Op>) {
    let c = cast();
    let n = community(&c);
    let ops: Vec<Op> = n.resolver.ops().cloned().collect();
    (c, n, ops)
}

#[test]
fn any_order_with_duplicates_gives_the_same_projection() {
    let (_, n, ops) = history();
    let mut reversed = Node::new(7, n.community());
    let mut rev = ops.clone();
    rev.reverse();
    let outcomes = reversed.resolver.add_ops(rev.iter().cloned());
    assert!(
        outcomes[..outcomes.len() - 1]
            .iter()
            .all(|o| *o == Added::Pending)
    );
    assert_eq!(reversed.resolver.pending_len(), 0);
    assert_eq!(reversed.json(), n.json());
    // One at a time, every op twice, interleaved.
    let mut one = Node::new(8, n.community());
    for (i, op) in rev.iter().enumerate() {
        one.resolver.add_op(op.clone());
        let again = one.resolver.add_op(rev[i / 2].clone());
        assert_eq!(again, Added::Duplicate);
    }
    assert_eq!(one.json(), n.json());
    assert_eq!(one.resolver.heads(), n.resolver.heads());
    assert_eq!(one.resolver.len(), ops.len());
}

#[test]
fn missing_parents_are_reported_and_ops_since_fills_them() {
    let (c, mut n, ops) = history();
    let mut late = Node::new(9, n.community());
    late.receive(&ops[..3]);
    let newest = n.must(&c.owner, create_channel(3, "new"));
    late.receive(std::slice::from_ref(&newest));
    assert_eq!(late.status(&newest), Some(OpStatus::Pending));
    assert!(!late.resolver.missing_parents().is_empty());
    let fill: Vec<Op> = n
        .resolver
        .ops_since(&late.resolver.heads())
        .into_iter()
        .cloned()
        .collect();
    assert!(fill.len() < n.resolver.len());
    late.receive(&fill);
    assert_eq!(late.status(&newest), Some(OpStatus::Valid));
    assert!(late.resolver.missing_parents().is_empty());
    assert_eq!(late.json(), n.json());
    assert!(n.resolver.ops_since(&n.resolver.heads()).is_empty());
}

#[test]
fn the_pending_set_is_bounded() {
    let (_, n, ops) = history();
    let mut r = Resolver::new(n.community(), 2);
    let mut rev = ops.clone();
    rev.reverse();
    let out = r.add_ops(rev.iter().take(3).cloned());
    assert_eq!(out[2], Added::Refused(Rejection::PendingFull));
    assert_eq!(r.pending_len(), 2);
}

#[test]
fn wire_form_round_trips_and_is_bounded() {
    let (_, _, ops) = history();
    for op in &ops {
        let wire = op.to_wire();
        let back = Op::from_wire(&wire).map(|o| o.id());
        assert_eq!(back, Ok(op.id()));
        assert!(Op::from_wire(&wire[..wire.len() - 1]).is_err());
    }
    let big = vec![0u8; MAX_OP_BYTES + 1];
    assert_eq!(
        Op::from_wire(&big).err(),
        Some(OpError::TooLarge(MAX_OP_BYTES + 1))
    );
}

#[test]
fn tampered_or_misaddressed_ops_are_refused() {
    let (c, mut n, _) = history();
    let op = n.must(&c.owner, create_channel(4, "x"));
    let fresh = || replica(10, &n);
    // Another community.
    let mut other = Resolver::new(uuid::Uuid::nil(), DEFAULT_MAX_PENDING);
    assert_eq!(
        other.add_op(op.clone()),
        Added::Refused(Rejection::WrongCommunity)
    );
    // A flipped payload byte breaks the signature.
    let mut event: SignedEvent = op.event().clone();
    let last = event.payload.len() - 1;
    event.payload[last] ^= 1;
    if let Ok(bad) = Op::from_event(event, op.inline_delegation().copied()) {
        let mut f = fresh();
        assert_eq!(
            f.resolver.add_op(bad),
            Added::Refused(Rejection::BadSignature)
        );
    }
    // Signed by a node the delegation does not name.
    let stranger = Node::new(77, n.community());
    let unsigned = together_crdt::UnsignedOp {
        body: op.body().clone(),
        command: op.command().clone(),
    };
    assert!(
        unsigned
            .sign(&stranger.key, &delegation(&c.owner, &n.public), true)
            .is_err()
    );
}

#[test]
fn a_change_that_does_not_match_its_command_is_rejected() {
    let (c, mut n, _) = history();
    let honest = n.resolver.prepare(
        &n.public,
        &n.actor,
        &c.member.public,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("honest".into()),
        },
        T0 + 500,
    );
    let Ok(mut unsigned) = honest else {
        panic!("prepare")
    };
    // Claim a harmless command but carry the change of another one: the
    // nickname change bytes under a "leave" command.
    unsigned.command = Command::Leave;
    unsigned.body.command = Command::Leave.to_bytes();
    let Ok(op) = unsigned.sign(&n.key, &delegation(&c.member, &n.public), true) else {
        panic!("sign")
    };
    n.resolver.add_op(op.clone());
    assert_eq!(
        n.status(&op),
        Some(OpStatus::Invalid(Rejection::ChangeMismatch))
    );
}

#[test]
fn an_actor_used_by_another_node_is_refused() {
    let (c, mut n, _) = history();
    let thief = Node::new(55, n.community());
    let Ok(unsigned) = n.resolver.prepare(
        &n.public,
        &n.actor,
        &c.owner.public,
        create_channel(6, "x"),
        T0 + 600,
    ) else {
        panic!("prepare")
    };
    let Ok(op) = unsigned.sign(&thief.key, &delegation(&c.owner, &thief.public), true) else {
        panic!("sign")
    };
    assert_eq!(
        n.resolver.add_op(op),
        Added::Refused(Rejection::ForeignActor)
    );
    let foreign = Actor::generate(&thief.public, n.community());
    assert!(
        n.resolver
            .prepare(
                &n.public,
                &foreign,
                &c.owner.public,
                create_channel(6, "x"),
                T0
            )
            .is_err()
    );
    let _: &NodePublicKey = &thief.public;
}

#[test]
fn one_actor_sequence_number_for_two_changes_voids_both() {
    let (c, n, _) = history();
    let mut a = replica(20, &n);
    let mut b = replica(20, &n); // the same node key and actor on two replicas: a buggy node
    let x = a.must(&c.owner, create_channel(8, "a"));
    let y = b.must(&c.owner, create_channel(9, "b"));
    a.receive(std::slice::from_ref(&y));
    b.receive(std::slice::from_ref(&x));
    for r in [&a, &b] {
        assert_eq!(
            r.status(&x),
            Some(OpStatus::Invalid(Rejection::Equivocation))
        );
        assert_eq!(
            r.status(&y),
            Some(OpStatus::Invalid(Rejection::Equivocation))
        );
    }
    assert_eq!(a.json(), b.json());
    assert_eq!(a.json(), n.json());
}

#[test]
fn revoked_delegations_void_later_ops_only() {
    let (c, mut n, _) = history();
    let before = n.must(
        &c.member,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("a".into()),
        },
    );
    let d = delegation(&c.member, &n.public);
    let Ok(rev) = Revocation::of(&d, n.clock + 1).sign(&c.member.key) else {
        panic!("revocation")
    };
    n.clock += 5;
    let after = n.must(
        &c.member,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("b".into()),
        },
    );
    assert!(n.is_valid(&after));
    assert_eq!(n.resolver.add_revocation(rev), Ok(()));
    assert!(n.is_valid(&before));
    assert_eq!(
        n.status(&after),
        Some(OpStatus::Invalid(Rejection::Revoked))
    );
    let nick = n
        .resolver
        .projection()
        .members
        .iter()
        .find(|m| m.user_id == c.member.id)
        .and_then(|m| m.nickname.clone());
    assert_eq!(nick, Some("a".into()));
}

#[test]
fn ops_referencing_an_unknown_delegation_wait_for_it() {
    let (c, mut n, _) = history();
    let Ok(unsigned) = n.resolver.prepare(
        &n.public,
        &n.actor,
        &c.member.public,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("by hash".into()),
        },
        T0 + 700,
    ) else {
        panic!("prepare")
    };
    let d = delegation(&c.member, &n.public);
    let Ok(op) = unsigned.sign(&n.key, &d, false) else {
        panic!("sign")
    };
    let mut r = replica(30, &n);
    // The replica learnt the member's delegation inline with the join; a
    // brand new delegation is unknown there.
    let Ok(newer) = together_protocol::identity::Delegation {
        issued: T0 - 5,
        ..d.delegation
    }
    .sign(&c.member.key) else {
        panic!("delegation")
    };
    let Ok(op2) = together_crdt::UnsignedOp {
        body: op.body().clone(),
        command: op.command().clone(),
    }
    .sign(&n.key, &newer, false) else {
        panic!("sign")
    };
    assert_eq!(r.resolver.add_op(op.clone()), Added::Stored);
    assert_eq!(r.resolver.add_op(op2.clone()), Added::Pending);
    assert_eq!(r.resolver.missing_delegations(), vec![newer.hash()]);
    assert_eq!(r.resolver.add_delegation(newer), Ok(()));
    assert_eq!(r.status(&op2), Some(OpStatus::Valid));
}

/// An op whose node signature no longer matches its bytes.
fn forged(op: &Op) -> Op {
    let mut event: SignedEvent = op.event().clone();
    let mut signature = event.signature.to_bytes();
    signature[10] ^= 1;
    event.signature = together_protocol::identity::Signature::from_array(signature);
    match Op::from_event(event, op.inline_delegation().copied()) {
        Ok(op) => op,
        Err(e) => panic!("a re-signed op still decodes: {e:?}"),
    }
}

#[test]
fn a_forged_op_in_a_large_batch_is_refused_alone_checked_ahead_or_not() {
    let (c, mut n, base) = history();
    // A chain long enough that signatures are checked on other threads,
    // chunk by chunk, while the ops are judged.
    let chain: Vec<Op> = (0..300u128)
        .map(|i| n.must(&c.owner, create_channel(1_000 + i, &format!("c{i}"))))
        .collect();
    let bad = 150;
    let mut batch: Vec<Op> = base.clone();
    batch.extend(chain.iter().enumerate().map(|(i, op)| if i == bad { forged(op) } else { op.clone() }));
    let at = base.len() + bad;

    let mut streamed = Node::new(11, n.community());
    let plain = streamed.resolver.add_ops(batch.iter().cloned());
    let mut ahead = Node::new(12, n.community());
    let checked = ahead.resolver.add_checked(together_crdt::CheckedOp::check_all(batch.clone()));
    for outcomes in [&plain, &checked] {
        assert_eq!(outcomes[at], Added::Refused(Rejection::BadSignature));
        // Before it everything is taken; after it, every op waits for
        // the refused one (each names the one before as its parent).
        assert!(outcomes[..at].iter().all(|o| *o == Added::Stored));
        assert!(outcomes[at + 1..].iter().all(|o| *o == Added::Pending));
    }
    assert_eq!(streamed.json(), ahead.json());
    // The honest op, once it comes, releases the rest: same as the origin.
    streamed.receive(&chain[bad..=bad]);
    assert_eq!(streamed.resolver.pending_len(), 0);
    assert_eq!(streamed.json(), n.json());
}
