#![allow(clippy::unwrap_used)]

//! Times a fresh resolver judging a community of N joins (one chain, as a
//! new node receives it): `cargo run --release -p together-crdt --example
//! join_chain -- 10000`.

use std::time::Instant;

use ed25519_dalek::SigningKey;
use together_crdt::{Op, Actor, Command, DEFAULT_MAX_PENDING, Genesis, Resolver, community_id, genesis_op};
use together_protocol::identity::{Delegation, NodePublicKey, SignedDelegation, UserPublicKey};

const T0: i64 = 1_767_225_600;

fn delegation(key: &SigningKey, node: &NodePublicKey) -> SignedDelegation {
    let d = Delegation {
        user: UserPublicKey::from(key),
        node: *node,
        issued: T0 - 10,
        expires: T0 + 10_000_000,
    };
    d.sign(key).unwrap()
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("load") {
        let bytes = std::fs::read(std::env::args().nth(2).unwrap()).unwrap();
        let mut all = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            all.push(Op::from_wire(&bytes[at + 4..at + 4 + len]).unwrap());
            at += 4 + len;
        }
        let community = all[0].body().community;
        return judge(community, &all);
    }
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let node_key = SigningKey::from_bytes(&[1; 32]);
    let node = NodePublicKey::from(&node_key);
    let owner = SigningKey::from_bytes(&[2; 32]);
    let owner_pub = UserPublicKey::from(&owner);
    let g = Genesis { nonce: [9; 16], name: "Big".into(), icon: None, description: None, public: false };
    let community = community_id(&owner_pub, &g.nonce);
    let actor = Actor::generate(&node, community);
    let mut home = Resolver::new(community, DEFAULT_MAX_PENDING);
    let od = delegation(&owner, &node);
    let genesis = genesis_op(&owner_pub, &actor, g, T0).unwrap().sign(&node_key, &od, true).unwrap();
    home.add_op(genesis);
    let invite = Command::CreateInvite { code: "bench".into(), channel: None, max_uses: None, expires_at: None };
    let op = home.prepare(&node, &actor, &owner_pub, invite, T0 + 1).unwrap().sign(&node_key, &od, true).unwrap();
    home.add_op(op);
    let members: Vec<(SigningKey, SignedDelegation)> = (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1000).to_le_bytes());
            let k = SigningKey::from_bytes(&seed);
            let d = delegation(&k, &node);
            (k, d)
        })
        .collect();
    let commands = members
        .iter()
        .map(|(k, _)| (UserPublicKey::from(k), Command::Join { invite: Some("bench".into()) }))
        .collect();
    let mut next = 0;
    let t = Instant::now();
    let chain = home
        .prepare_chain_unchecked(&node, &actor, commands, T0 + 2, |u| {
            let op = u.sign(&node_key, &members[next].1, true).unwrap();
            next += 1;
            op
        })
        .unwrap();
    eprintln!("made {} ops in {:?}", chain.len(), t.elapsed());
    let all: Vec<_> = home.ops().cloned().chain(chain).collect();
    if let Some(path) = std::env::args().nth(2) {
        // Keep the ops for profiling the judging alone (`load` mode).
        let mut out = Vec::new();
        for op in &all {
            let wire = op.to_wire();
            out.extend_from_slice(&(wire.len() as u32).to_le_bytes());
            out.extend_from_slice(&wire);
        }
        std::fs::write(path, out).unwrap();
    }
    judge(community, &all);
}

fn judge(community: uuid::Uuid, all: &[Op]) {
    for _ in 0..2 {
        let t = Instant::now();
        let mut fresh = Resolver::new(community, DEFAULT_MAX_PENDING);
        fresh.add_ops(all.iter().cloned());
        eprintln!(
            "judged {} ops in {:?}: {} members",
            all.len(),
            t.elapsed(),
            fresh.state().members.len()
        );
    }
}

