//! The code reproduces, byte for byte, the test vectors in `spec/identity.md`.
//!
//! The spec's ```` ```vectors ```` blocks hold `name = value` lines. This test
//! computes every value from the same fixed inputs and requires the two sets
//! to be identical: no value may differ, be missing, or be extra. On failure
//! it prints the block as the code computes it.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use together_protocol::identity::{
    Delegation, EventKind, NodePublicKey, Revocation, SignInChallenge, SignedEvent, UserPublicKey,
    format_key_file, user_id,
};

const USER_SEED: [u8; 32] = [1; 32];
const NODE_SEED: [u8; 32] = [2; 32];
const NONCE: [u8; 32] = [3; 32];
/// 2026-01-01T00:00:00Z
const ISSUED: i64 = 1_767_225_600;
/// 30 days later.
const EXPIRES: i64 = ISSUED + 30 * 86_400;
/// 2026-01-02T00:00:00Z
const REVOKED: i64 = ISSUED + 86_400;
const EVENT_KIND: &str = "message";
const PAYLOAD: &[u8] = b"hello, together";

fn computed() -> Vec<(&'static str, String)> {
    let user_key = SigningKey::from_bytes(&USER_SEED);
    let node_key = SigningKey::from_bytes(&NODE_SEED);
    let user = UserPublicKey::from(&user_key);
    let node = NodePublicKey::from(&node_key);

    let delegation = Delegation {
        user,
        node,
        issued: ISSUED,
        expires: EXPIRES,
    };
    let Ok(signed_delegation) = delegation.sign(&user_key) else {
        panic!("signing the vector delegation");
    };
    let Ok(signed_revocation) = Revocation::of(&signed_delegation, REVOKED).sign(&user_key) else {
        panic!("signing the vector revocation");
    };
    let challenge = SignInChallenge {
        node,
        nonce: NONCE,
        issued: ISSUED,
    };
    let Ok(kind) = EventKind::new(EVENT_KIND) else {
        panic!("vector event kind");
    };
    let Ok(event) = SignedEvent::sign(kind, &node_key, &signed_delegation, PAYLOAD.to_vec()) else {
        panic!("signing the vector event");
    };
    let key_file = format_key_file(&user_key);
    let Some(seed_line) = key_file.lines().nth(1) else {
        panic!("key file has a seed line");
    };
    let Ok(delegation_json) = serde_json::to_string(&signed_delegation) else {
        panic!("delegation to JSON");
    };
    let Ok(event_json) = serde_json::to_string(&event) else {
        panic!("event to JSON");
    };

    vec![
        ("user.seed", hex::encode(USER_SEED)),
        ("user.public_key", hex::encode(user.as_bytes())),
        ("user.public_key.base64url", user.to_string()),
        ("user.id", user_id(user.verifying_key()).to_string()),
        ("node.seed", hex::encode(NODE_SEED)),
        ("node.public_key", hex::encode(node.as_bytes())),
        ("node.public_key.base64url", node.to_string()),
        ("delegation.issued", ISSUED.to_string()),
        ("delegation.expires", EXPIRES.to_string()),
        (
            "delegation.canonical",
            hex::encode(delegation.canonical_bytes()),
        ),
        (
            "delegation.signature",
            hex::encode(signed_delegation.signature.as_bytes()),
        ),
        (
            "delegation.hash",
            hex::encode(signed_delegation.hash().as_bytes()),
        ),
        ("delegation.json", delegation_json),
        ("revocation.issued", REVOKED.to_string()),
        (
            "revocation.canonical",
            hex::encode(signed_revocation.revocation.canonical_bytes()),
        ),
        (
            "revocation.signature",
            hex::encode(signed_revocation.signature.as_bytes()),
        ),
        ("revocation.hash", hex::encode(signed_revocation.hash())),
        ("sign_in.nonce", hex::encode(NONCE)),
        ("sign_in.issued", ISSUED.to_string()),
        (
            "sign_in.canonical",
            hex::encode(challenge.canonical_bytes()),
        ),
        (
            "sign_in.signature",
            hex::encode(challenge.sign(&user_key).as_bytes()),
        ),
        ("event.kind", EVENT_KIND.to_owned()),
        ("event.payload", hex::encode(PAYLOAD)),
        ("event.canonical", hex::encode(event.canonical_bytes())),
        ("event.signature", hex::encode(event.signature.as_bytes())),
        ("event.hash", hex::encode(event.hash())),
        ("event.json", event_json),
        ("key_file.seed_line", seed_line.to_owned()),
    ]
}

/// The `name = value` lines of every ```` ```vectors ```` block in the spec.
fn spec_vectors() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/identity.md");
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => panic!("reading {path}: {error}"),
    };
    let mut vectors = BTreeMap::new();
    let mut in_block = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if !in_block {
            in_block = trimmed == "```vectors";
            continue;
        }
        if trimmed == "```" {
            in_block = false;
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, value)) = trimmed.split_once('=') else {
            panic!("vector line without '=': {line:?}");
        };
        let previous = vectors.insert(name.trim().to_owned(), value.trim().to_owned());
        assert!(previous.is_none(), "vector {name:?} appears twice");
    }
    vectors
}

#[test]
fn code_reproduces_the_spec_vectors() {
    let computed = computed();
    let spec = spec_vectors();
    let ours: BTreeMap<String, String> = computed
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    if ours != spec {
        let width = computed.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let block: String = computed
            .iter()
            .map(|(name, value)| format!("{name:width$} = {value}\n"))
            .collect();
        for (name, value) in &ours {
            match spec.get(name) {
                None => eprintln!("missing from the spec: {name}"),
                Some(theirs) if theirs != value => eprintln!("differs: {name}"),
                Some(_) => {}
            }
        }
        for name in spec.keys().filter(|name| !ours.contains_key(*name)) {
            eprintln!("in the spec but not computed: {name}");
        }
        panic!("spec/identity.md vectors differ from the code; computed:\n```vectors\n{block}```");
    }
}

#[test]
fn spec_vectors_parse_back() {
    // The JSON forms in the spec deserialize into values that verify.
    let spec = spec_vectors();
    let Some(json) = spec.get("delegation.json") else {
        panic!("delegation.json vector");
    };
    let Ok(delegation) =
        serde_json::from_str::<together_protocol::identity::SignedDelegation>(json)
    else {
        panic!("delegation.json parses");
    };
    assert!(delegation.verify(ISSUED).is_ok());
    let Some(json) = spec.get("event.json") else {
        panic!("event.json vector");
    };
    let Ok(event) = serde_json::from_str::<SignedEvent>(json) else {
        panic!("event.json parses");
    };
    assert!(event.verify(EVENT_KIND, &delegation, ISSUED).is_ok());
}
