//! The test vectors of `spec/community-state.md` §9, recomputed from the
//! code. Every `key = value` line of the spec's `vectors` block must match,
//! and every computed value must be in the spec, so neither can drift.
//! Run with `PRINT_VECTORS=1 -- --nocapture` to print the block.

use ed25519_dalek::SigningKey;
use together_crdt::{
    Actor, ChannelKind, Command, DEFAULT_MAX_PENDING, Genesis, Resolver, community_id, genesis_op,
};
use together_protocol::identity::{Delegation, NodePublicKey, UserPublicKey};
use uuid::Uuid;

const T0: i64 = 1_767_225_600;

fn vectors() -> Vec<(&'static str, String)> {
    let user_key = SigningKey::from_bytes(&[1; 32]);
    let node_key = SigningKey::from_bytes(&[2; 32]);
    let user = UserPublicKey::from(&user_key);
    let node = NodePublicKey::from(&node_key);
    let Ok(delegation) = (Delegation {
        user,
        node,
        issued: T0,
        expires: T0 + 30 * 86_400,
    })
    .sign(&user_key) else {
        panic!("delegation")
    };
    let nonce = [3u8; 16];
    let community = community_id(&user, &nonce);
    let actor = Actor::from_salt(&node, community, [4; 16]);
    let genesis = Genesis {
        nonce,
        name: "Together".into(),
        icon: None,
        description: None,
        public: false,
    };
    let Ok(unsigned) = genesis_op(&user, &actor, genesis, T0) else {
        panic!("genesis")
    };
    let Ok(g) = unsigned.sign(&node_key, &delegation, true) else {
        panic!("sign")
    };
    let mut r = Resolver::new(community, DEFAULT_MAX_PENDING);
    r.add_op(g.clone());
    let command = Command::CreateChannel {
        id: Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0001),
        name: "general".into(),
        kind: ChannelKind::Text,
        parent: None,
        topic: None,
        position: 0,
    };
    let Ok(unsigned) = r.prepare(&node, &actor, &user, command, T0 + 60) else {
        panic!("prepare")
    };
    let Ok(c) = unsigned.sign(&node_key, &delegation, false) else {
        panic!("sign")
    };
    r.add_op(c.clone());
    let hex = |b: &[u8]| hex::encode(b);
    vec![
        ("user.public_key", hex(&user.to_bytes())),
        ("node.public_key", hex(&node.to_bytes())),
        ("delegation.hash", hex(&delegation.hash().as_bytes()[..])),
        ("community.id", community.to_string()),
        ("actor", hex(&actor.0)),
        ("genesis.command", hex(&g.body().command)),
        ("genesis.change", hex(&g.body().change)),
        ("genesis.canonical", hex(&g.event().canonical_bytes())),
        ("genesis.signature", hex(&g.event().signature.to_bytes())),
        ("genesis.id", g.id().to_hex()),
        ("channel.command", hex(&c.body().command)),
        ("channel.change", hex(&c.body().change)),
        ("channel.canonical", hex(&c.event().canonical_bytes())),
        ("channel.signature", hex(&c.event().signature.to_bytes())),
        ("channel.id", c.id().to_hex()),
        ("channel.wire", hex(&c.to_wire())),
        (
            "projection.json",
            String::from_utf8_lossy(&r.projection().to_json()).into_owned(),
        ),
    ]
}

fn spec_block() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/community-state.md");
    let Ok(text) = std::fs::read_to_string(path) else {
        panic!("read {path}")
    };
    let Some(start) = text.find("```vectors\n") else {
        panic!("no vectors block")
    };
    let rest = &text[start + "```vectors\n".len()..];
    let Some(end) = rest.find("```") else {
        panic!("unterminated vectors block")
    };
    rest[..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once(" = ") {
            Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
            None => panic!("bad vector line {l:?}"),
        })
        .collect()
}

#[test]
fn spec_vectors_match_the_code() {
    let computed = vectors();
    if std::env::var("PRINT_VECTORS").is_ok() {
        let width = computed.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &computed {
            println!("{k:width$} = {v}");
        }
    }
    let spec = spec_block();
    assert_eq!(
        spec.len(),
        computed.len(),
        "the spec and the code list different vectors"
    );
    for ((sk, sv), (ck, cv)) in spec.iter().zip(&computed) {
        assert_eq!(sk, ck);
        assert_eq!(sv, cv, "vector {sk} drifted");
    }
}
