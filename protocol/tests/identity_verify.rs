//! Signing and verification of identity objects, above all what must fail:
//! tampered bytes, wrong keys, expired windows, malleated or forged
//! signatures, cross-domain reuse, malformed JSON. Nothing may panic.

use ed25519_dalek::SigningKey;
use together_protocol::identity::{
    Delegation, EventKind, IdentityError, NodePublicKey, Revocation, SignInChallenge, SignInProof,
    Signature, SignedDelegation, SignedEvent, SignedRevocation, UserPublicKey,
    generate_signing_key, user_id, verify_sign_in,
};

const T0: i64 = 1_767_225_600;
const DAY: i64 = 86_400;

fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

fn ok<T>(result: Result<T, IdentityError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("unexpected error: {error}"),
    }
}

fn delegate(user: &SigningKey, node: &SigningKey, issued: i64, expires: i64) -> SignedDelegation {
    ok(Delegation {
        user: UserPublicKey::from(user),
        node: NodePublicKey::from(node),
        issued,
        expires,
    }
    .sign(user))
}

fn kind(name: &str) -> EventKind {
    ok(EventKind::new(name))
}

/// `s + L` for a signature's `s` (little-endian), the classic malleation.
fn malleate(signature: &Signature) -> Signature {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut bytes = signature.to_bytes();
    let mut carry = 0u16;
    for (i, l) in L.iter().enumerate() {
        let sum = u16::from(bytes[32 + i]) + u16::from(*l) + carry;
        bytes[32 + i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    Signature::from_array(bytes)
}

fn flip(signature: &Signature, index: usize) -> Signature {
    let mut bytes = signature.to_bytes();
    bytes[index] ^= 1;
    Signature::from_array(bytes)
}

#[test]
fn delegation_round_trip() {
    let user = generate_signing_key();
    let node = generate_signing_key();
    let signed = delegate(&user, &node, T0, T0 + DAY);
    assert_eq!(signed.verify(T0), Ok(user_id(&user.verifying_key())));
    let Ok(json) = serde_json::to_string(&signed) else {
        panic!("serialize");
    };
    let Ok(back) = serde_json::from_str::<SignedDelegation>(&json) else {
        panic!("deserialize");
    };
    assert_eq!(back, signed);
    assert_eq!(back.hash(), signed.hash());
    assert_eq!(back.verify(T0 + DAY - 1), Ok(signed.delegation.user_id()));
}

#[test]
fn tampered_delegations_fail() {
    let signed = delegate(&key(1), &key(2), T0, T0 + DAY);
    let mut tampered = Vec::new();
    let mut d = signed;
    d.delegation.expires += 1;
    tampered.push(d);
    let mut d = signed;
    d.delegation.issued -= 1;
    tampered.push(d);
    let mut d = signed;
    d.delegation.node = NodePublicKey::from(&key(3));
    tampered.push(d);
    // Another user's key in place of the signer's.
    let mut d = signed;
    d.delegation.user = UserPublicKey::from(&key(3));
    tampered.push(d);
    for index in [0, 31, 32, 63] {
        let mut d = signed;
        d.signature = flip(&signed.signature, index);
        tampered.push(d);
    }
    for d in tampered {
        assert_eq!(d.verify(T0), Err(IdentityError::BadSignature), "{d:?}");
        assert_ne!(d.hash(), signed.hash());
    }
}

#[test]
fn delegation_window_is_enforced() {
    let signed = delegate(&key(1), &key(2), T0, T0 + DAY);
    assert!(signed.verify(T0 + DAY / 2).is_ok());
    assert_eq!(
        signed.verify(T0 + DAY),
        Err(IdentityError::Expired {
            expires: T0 + DAY,
            now: T0 + DAY
        })
    );
    assert_eq!(
        signed.verify(T0 - 3600),
        Err(IdentityError::NotYetValid {
            issued: T0,
            now: T0 - 3600
        })
    );
    // The signature itself stays good outside the window.
    assert!(signed.verify_signature().is_ok());
    assert!(matches!(
        Delegation {
            expires: T0,
            ..signed.delegation
        }
        .sign(&key(1)),
        Err(IdentityError::EmptyWindow { .. })
    ));
    assert!(matches!(
        signed.delegation.sign(&key(2)),
        Err(IdentityError::KeyMismatch { .. })
    ));
}

#[test]
fn malleated_and_forged_signatures_fail() {
    let signed = delegate(&key(1), &key(2), T0, T0 + DAY);
    // s + L: a lax verifier might reduce s and accept.
    let mut d = signed;
    d.signature = malleate(&signed.signature);
    assert_eq!(d.verify(T0), Err(IdentityError::BadSignature));
    // R = identity (small order), s = 0.
    let mut forged = [0u8; 64];
    forged[0] = 1;
    d.signature = Signature::from_array(forged);
    assert_eq!(d.verify(T0), Err(IdentityError::BadSignature));
    d.signature = Signature::from_array([0; 64]);
    assert_eq!(d.verify(T0), Err(IdentityError::BadSignature));
    d.signature = Signature::from_array([0xff; 64]);
    assert_eq!(d.verify(T0), Err(IdentityError::BadSignature));
}

#[test]
fn signatures_do_not_cross_domains() {
    let user = key(1);
    let node = key(2);
    let signed = delegate(&user, &node, T0, T0 + DAY);
    let challenge = SignInChallenge {
        node: NodePublicKey::from(&node),
        nonce: [3; 32],
        issued: T0,
    };
    // The user's delegation signature is no sign-in answer, and the
    // reverse; a revocation signature is no delegation signature.
    assert_eq!(
        challenge.verify(&signed.delegation.user, &signed.signature, T0, 60),
        Err(IdentityError::BadSignature)
    );
    let mut d = signed;
    d.signature = challenge.sign(&user);
    assert_eq!(d.verify(T0), Err(IdentityError::BadSignature));
    let revocation = ok(Revocation::of(&signed, T0).sign(&user));
    d.signature = revocation.signature;
    assert_eq!(d.verify(T0), Err(IdentityError::BadSignature));
    // An event relabelled with another kind fails.
    let mut event = ok(SignedEvent::sign(
        kind("message"),
        &node,
        &signed,
        b"x".to_vec(),
    ));
    event.kind = kind("edit");
    assert_eq!(event.verify_signature(), Err(IdentityError::BadSignature));
}

#[test]
fn revocations() {
    let user = key(1);
    let signed = delegate(&user, &key(2), T0, T0 + DAY);
    let other = delegate(&user, &key(3), T0, T0 + DAY);
    let revocation = ok(Revocation::of(&signed, T0 + 10).sign(&user));
    assert_eq!(revocation.verify(), Ok(signed.delegation.user_id()));
    assert!(revocation.revokes(&signed));
    assert!(!revocation.revokes(&other));

    let Ok(json) = serde_json::to_string(&revocation) else {
        panic!("serialize");
    };
    assert_eq!(
        serde_json::from_str::<SignedRevocation>(&json).ok(),
        Some(revocation)
    );

    // Only the user can revoke: another key cannot sign for them, and a
    // revocation naming another user does not apply.
    assert!(matches!(
        Revocation::of(&signed, T0).sign(&key(9)),
        Err(IdentityError::KeyMismatch { .. })
    ));
    let foreign = ok(Revocation {
        user: UserPublicKey::from(&key(9)),
        delegation_hash: signed.hash(),
        issued: T0,
    }
    .sign(&key(9)));
    assert!(foreign.verify().is_ok());
    assert!(!foreign.revokes(&signed));

    let mut tampered = revocation;
    tampered.revocation.issued += 1;
    assert_eq!(tampered.verify(), Err(IdentityError::BadSignature));
    let mut tampered = revocation;
    tampered.revocation.delegation_hash = other.hash();
    assert_eq!(tampered.verify(), Err(IdentityError::BadSignature));
}

#[test]
fn events() {
    let user = key(1);
    let node = key(2);
    let delegation = delegate(&user, &node, T0, T0 + DAY);
    let event = ok(SignedEvent::sign(
        kind("message"),
        &node,
        &delegation,
        b"payload".to_vec(),
    ));
    assert_eq!(event.verify_signature(), Ok(()));
    assert_eq!(
        event.verify("message", &delegation, T0 + 5),
        Ok(delegation.delegation.user_id())
    );
    let Ok(json) = serde_json::to_string(&event) else {
        panic!("serialize");
    };
    assert_eq!(
        serde_json::from_str::<SignedEvent>(&json).ok().as_ref(),
        Some(&event)
    );

    // Judged at its own time, history outlives the delegation.
    assert!(event.verify("message", &delegation, T0 + DAY - 1).is_ok());
    assert!(matches!(
        event.verify("message", &delegation, T0 + DAY),
        Err(IdentityError::Expired { .. })
    ));
    assert!(matches!(
        event.verify("op", &delegation, T0),
        Err(IdentityError::WrongKind { .. })
    ));
    let other = delegate(&user, &node, T0, T0 + 2 * DAY);
    assert_eq!(
        event.verify("message", &other, T0),
        Err(IdentityError::DelegationMismatch)
    );

    // A node cannot sign under another node's delegation.
    assert!(matches!(
        SignedEvent::sign(kind("message"), &key(3), &delegation, Vec::new()),
        Err(IdentityError::KeyMismatch { .. })
    ));
    let mut moved = event.clone();
    moved.node = NodePublicKey::from(&key(3));
    assert_eq!(
        moved.verify("message", &delegation, T0),
        Err(IdentityError::WrongNode)
    );
    assert_eq!(moved.verify_signature(), Err(IdentityError::BadSignature));

    let mut tampered = event.clone();
    tampered.payload.push(0);
    assert_eq!(
        tampered.verify("message", &delegation, T0),
        Err(IdentityError::BadSignature)
    );
    let mut tampered = event.clone();
    tampered.signature = malleate(&event.signature);
    assert_eq!(
        tampered.verify("message", &delegation, T0),
        Err(IdentityError::BadSignature)
    );
    // Same payload, same signature, but the delegation hash swapped for
    // another valid one: the signature covers it.
    let mut tampered = event.clone();
    tampered.delegation = other.hash();
    assert_eq!(
        tampered.verify("message", &other, T0),
        Err(IdentityError::BadSignature)
    );
    // A forged delegation does not carry the event.
    let mut forged = delegation;
    forged.signature = flip(&delegation.signature, 5);
    let tampered = ok(SignedEvent::sign(
        kind("message"),
        &node,
        &forged,
        event.payload.clone(),
    ));
    assert_eq!(
        tampered.verify("message", &forged, T0),
        Err(IdentityError::BadSignature)
    );
}

#[test]
fn sign_in() {
    let user = key(1);
    let node = key(2);
    let challenge = SignInChallenge::new(NodePublicKey::from(&node), T0);
    let proof = ok(SignInProof::create(&challenge, &user, T0 + 1, T0 + DAY));
    let id = user_id(&user.verifying_key());
    assert_eq!(verify_sign_in(&challenge, &proof, T0 + 1, 300), Ok(id));

    let Ok(json) = serde_json::to_string(&challenge) else {
        panic!("serialize");
    };
    assert_eq!(
        serde_json::from_str::<SignInChallenge>(&json).ok(),
        Some(challenge)
    );
    let Ok(json) = serde_json::to_string(&proof) else {
        panic!("serialize");
    };
    assert_eq!(serde_json::from_str::<SignInProof>(&json).ok(), Some(proof));

    // Stale, or from the future.
    assert!(matches!(
        verify_sign_in(&challenge, &proof, T0 + 301, 300),
        Err(IdentityError::StaleChallenge { .. })
    ));
    assert!(matches!(
        verify_sign_in(&challenge, &proof, T0 - 1000, 300),
        Err(IdentityError::StaleChallenge { .. })
    ));
    // Another nonce (a replay against a new challenge).
    let fresh = SignInChallenge::new(challenge.node, T0);
    assert_ne!(fresh.nonce, challenge.nonce);
    assert_eq!(
        verify_sign_in(&fresh, &proof, T0 + 1, 300),
        Err(IdentityError::BadSignature)
    );
    // A delegation to another node.
    let elsewhere = SignInProof {
        delegation: delegate(&user, &key(3), T0, T0 + DAY),
        ..proof
    };
    assert_eq!(
        verify_sign_in(&challenge, &elsewhere, T0 + 1, 300),
        Err(IdentityError::WrongNode)
    );
    // Someone else's answer with the user's (public) delegation.
    let impostor = SignInProof {
        signature: challenge.sign(&key(9)),
        ..proof
    };
    assert_eq!(
        verify_sign_in(&challenge, &impostor, T0 + 1, 300),
        Err(IdentityError::BadSignature)
    );
    // An expired delegation.
    let old = SignInProof {
        delegation: delegate(&user, &node, T0 - 2 * DAY, T0 - DAY),
        ..proof
    };
    assert!(matches!(
        verify_sign_in(&challenge, &old, T0 + 1, 300),
        Err(IdentityError::Expired { .. })
    ));
    // Extreme times do not overflow.
    assert!(verify_sign_in(&challenge, &proof, i64::MIN, i64::MAX).is_err());
    assert!(verify_sign_in(&challenge, &proof, i64::MAX, 300).is_err());
}

#[test]
fn malformed_json_is_an_error() {
    let signed = delegate(&key(1), &key(2), T0, T0 + DAY);
    let Ok(good) = serde_json::to_string(&signed) else {
        panic!("serialize");
    };
    let user = signed.delegation.user.to_string();
    let node = signed.delegation.node.to_string();
    assert!(node.contains('-') && node.contains('_'));
    let sig = signed.signature.to_string();
    let hex_user = hex::encode(signed.delegation.user.as_bytes());
    let mut small_order = [0u8; 32];
    small_order[0] = 1;
    let small_order = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        small_order,
    );
    let cases = [
        ("31-byte key", good.replace(&user, &user[..42])),
        ("33-byte key", good.replace(&user, &format!("{user}AA"))),
        ("padding", good.replace(&user, &format!("{user}="))),
        (
            "standard alphabet",
            good.replace(&node, &node.replace('-', "+").replace('_', "/")),
        ),
        ("hex key", good.replace(&user, &hex_user)),
        ("small-order key", good.replace(&user, &small_order)),
        ("63-byte signature", good.replace(&sig, &sig[..84])),
        ("empty signature", good.replace(&sig, "")),
        ("not base64", good.replace(&sig, "...")),
        ("renamed field", good.replace("\"issued\"", "\"issued_at\"")),
        (
            "string time",
            good.replace(&T0.to_string(), "\"1767225600\""),
        ),
        (
            "extra inner field",
            good.replace("\"user\"", "\"x\":1,\"user\""),
        ),
        (
            "extra outer field",
            good.replace(",\"signature\"", ",\"x\":1,\"signature\""),
        ),
        ("empty object", String::from("{}")),
        ("null", String::from("null")),
    ];
    for (what, case) in &cases {
        assert_ne!(case, &good, "{what}: the case changes nothing");
        assert!(
            serde_json::from_str::<SignedDelegation>(case).is_err(),
            "{what} accepted: {case}"
        );
    }
    // The unmodified document still parses.
    assert!(serde_json::from_str::<SignedDelegation>(&good).is_ok());
}

#[test]
fn random_bytes_never_panic() {
    // A small deterministic generator; no real randomness is needed.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let signed = delegate(&key(1), &key(2), T0, T0 + DAY);
    let event = ok(SignedEvent::sign(
        kind("op"),
        &key(2),
        &signed,
        vec![1, 2, 3],
    ));
    let Ok(json) = serde_json::to_vec(&event) else {
        panic!("serialize");
    };
    for _ in 0..2000 {
        let mut bytes = [0u8; 32];
        for b in &mut bytes {
            *b = next() as u8;
        }
        let _ = UserPublicKey::from_bytes(&bytes);
        let len = (next() % 40) as usize % 33;
        if len != 32 {
            assert!(NodePublicKey::from_bytes(&bytes[..len]).is_err(), "a {len}-byte node key is refused");
        } else {
            let _ = NodePublicKey::from_bytes(&bytes[..len]);
        }
        let _ = Signature::from_bytes(&bytes);

        let mut mutated = json.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % mutated.len();
            mutated[at] = next() as u8;
        }
        if let Ok(parsed) = serde_json::from_slice::<SignedEvent>(&mutated) {
            // Only the untouched event verifies; any change that still parses
            // must be refused, and its hash must differ from the original's.
            let intact = parsed == event;
            assert_eq!(parsed.verify("op", &signed, T0).is_ok(), intact, "{parsed:?}");
            assert_eq!(parsed.hash() == event.hash(), intact, "{parsed:?}");
        }
    }
}
