//! Property tests: random ops by random authors on 3–5 replicas, delivered
//! in random orders with duplicates and partitions, always converge to
//! byte-identical projections; ops their authors were not allowed to make
//! never take effect.

use std::collections::BTreeSet;

use proptest::prelude::*;
use together_crdt::{ChannelKind, Command, Op, OpStatus, OverrideTarget, Rejection, State, authorize};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use super::support::*;

#[derive(Debug, Clone)]
enum Step {
    /// `replica` makes command `cmd` for user `author`; `forge` skips the
    /// builder's permission check, as a malicious node would.
    /// The first of `cmds` the builder accepts is made (all of them are
    /// tried when forging, the first is forged).
    Act {
        replica: usize,
        author: usize,
        cmds: Vec<Gen>,
        forge: bool,
    },
    /// `to` receives up to `count` of the ops `from` has and it lacks,
    /// shuffled, some twice.
    Deliver {
        from: usize,
        to: usize,
        count: usize,
    },
    /// Replicas whose bit in `mask` differs cannot talk until `Heal`.
    Partition {
        mask: u8,
    },
    Heal,
}

#[derive(Debug, Clone)]
struct Gen {
    kind: u8,
    a: usize,
    b: usize,
    c: usize,
}

/// Authors, weighted toward those who can do things.
const AUTHORS: [usize; 9] = [0, 0, 1, 1, 2, 2, 3, 4, 5];

const PERMS: [Permissions; 6] = [
    Permissions::empty(),
    Permissions::MANAGE_CHANNELS,
    Permissions::MANAGE_ROLES,
    Permissions::KICK_MEMBERS.union(Permissions::BAN_MEMBERS),
    Permissions::ADMINISTRATOR,
    Permissions::DEFAULT_EVERYONE,
];

fn command(g: &Gen, users: &[User], author: &User) -> Command {
    let user = users[g.b % users.len()].id;
    let role = role_id(1 + (g.a % 5) as u128);
    let channel = channel_id(1 + (g.a % 4) as u128);
    match g.kind % 18 {
        0 => Command::CreateChannel {
            id: channel,
            name: format!("c{}", g.b),
            kind: if g.c.is_multiple_of(3) {
                ChannelKind::Voice
            } else {
                ChannelKind::Text
            },
            parent: None,
            topic: None,
            position: (g.c % 5) as i32,
        },
        1 => Command::UpdateChannel {
            id: channel,
            name: Some(format!("r{}", g.b)),
            parent: None,
            topic: Some(Some(format!("t{}", g.c))),
            position: None,
        },
        2 => Command::DeleteChannel { id: channel },
        3 => Command::CreateRole {
            id: role,
            name: format!("role{}", g.b),
            permissions: PERMS[g.b % PERMS.len()],
            color: None,
            hoist: false,
            mentionable: false,
            position: 1 + (g.c % 12) as i32,
        },
        4 => Command::UpdateRole {
            id: role,
            name: None,
            permissions: Some(PERMS[g.b % PERMS.len()]),
            color: None,
            hoist: None,
            mentionable: None,
            position: g.c.is_multiple_of(2).then_some(1 + (g.c % 12) as i32),
        },
        5 => Command::DeleteRole { id: role },
        6 => Command::SetMemberRoles {
            user,
            roles: (0..5u128)
                .filter(|k| g.c & (1 << k) != 0)
                .map(|k| role_id(1 + k))
                .collect::<BTreeSet<Uuid>>(),
        },
        7 => Command::SetNickname {
            user: if g.c.is_multiple_of(2) {
                author.id
            } else {
                user
            },
            nickname: Some(format!("n{}", g.a)),
        },
        8 => Command::Join { invite: None },
        9 => Command::Leave,
        10 => Command::Kick { user },
        11 => Command::Ban { user, reason: None },
        12 => Command::Unban { user },
        13 => Command::CreateInvite {
            code: format!("code{}", g.a % 3),
            channel: None,
            max_uses: Some(1 + (g.c % 2) as i32),
            expires_at: None,
        },
        14 => Command::Join {
            invite: Some(format!("code{}", g.a % 3)),
        },
        15 => Command::SetOverride {
            channel,
            target: if g.c.is_multiple_of(2) {
                OverrideTarget::Role(role)
            } else {
                OverrideTarget::Member(user)
            },
            allow: Permissions::SEND_MESSAGES,
            deny: if g.b.is_multiple_of(2) {
                Permissions::MANAGE_CHANNELS
            } else {
                Permissions::VIEW_CHANNEL
            },
        },
        16 => Command::UpdateServer {
            name: Some(format!("s{}", g.a)),
            icon: None,
            description: None,
            public: Some(!g.c.is_multiple_of(4)),
        },
        _ => Command::TransferOwnership { new_owner: user },
    }
}

fn step() -> impl Strategy<Value = Step> {
    let g = (any::<u8>(), 0usize..64, 0usize..64, 0usize..64).prop_map(|(kind, a, b, c)| Gen {
        kind,
        a,
        b,
        c,
    });
    prop_oneof![
        8 => (0usize..5, 0usize..9, prop::collection::vec(g, 4), prop::bool::weighted(0.25))
            .prop_map(|(replica, author, cmds, forge)| Step::Act { replica, author: AUTHORS[author], cmds, forge }),
        4 => (0usize..5, 0usize..5, 1usize..8).prop_map(|(from, to, count)| Step::Deliver { from, to, count }),
        1 => any::<u8>().prop_map(|mask| Step::Partition { mask }),
        1 => Just(Step::Heal),
    ]
}

/// A tiny deterministic shuffle source (the seed comes from proptest).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }

    /// `items` shuffled, with about a quarter of them repeated.
    fn scramble(&mut self, items: &[Op]) -> Vec<Op> {
        let mut out: Vec<Op> = items.to_vec();
        for op in items {
            if self.next().is_multiple_of(4) {
                out.push(op.clone());
            }
        }
        self.shuffle(&mut out);
        out
    }
}

fn run(replicas: usize, steps: Vec<Step>, seed: u64) -> Result<(), TestCaseError> {
    let c = cast();
    let users = vec![
        c.owner.clone(),
        c.admin.clone(),
        c.mod1.clone(),
        c.mod2.clone(),
        c.member.clone(),
        c.outsider.clone(),
    ];
    let base = community(&c);
    let mut nodes: Vec<Node> = (0..replicas)
        .map(|i| replica(110 + i as u8, &base))
        .collect();
    let mut rng = Rng(seed | 1);
    let mut mask: Option<u8> = None;
    let mut forbidden: Vec<(Op, Command)> = Vec::new();
    let mut honest: Vec<Op> = Vec::new();

    for s in steps {
        match s {
            Step::Act {
                replica,
                author,
                cmds,
                forge,
            } => {
                let r = replica % replicas;
                let user = &users[author];
                if forge {
                    let command = command(&cmds[0], &users, user);
                    let state = nodes[r].resolver.state().clone();
                    let standing = state.standing(&user.id);
                    let allowed = authorize(
                        &state,
                        &standing,
                        &user.public,
                        &command,
                        nodes[r].clock + 1,
                        &Default::default(),
                    )
                    .is_ok();
                    if let Some(op) = nodes[r].try_forge(user, command.clone())
                        && !allowed
                    {
                        forbidden.push((op, command));
                    }
                } else {
                    for g in &cmds {
                        if let Ok(op) = nodes[r].act(user, command(g, &users, user)) {
                            prop_assert!(
                                nodes[r].is_valid(&op),
                                "a prepared op is invalid locally: {:?}",
                                nodes[r].status(&op)
                            );
                            honest.push(op);
                            break;
                        }
                    }
                }
            }
            Step::Deliver { from, to, count } => {
                let (from, to) = (from % replicas, to % replicas);
                if from == to || mask.is_some_and(|m| (m >> from) & 1 != (m >> to) & 1) {
                    continue;
                }
                let mut ops: Vec<Op> = nodes[from].resolver.ops().cloned().collect();
                rng.shuffle(&mut ops);
                ops.truncate(count);
                let batch = rng.scramble(&ops);
                nodes[to].receive(&batch);
            }
            Step::Partition { mask: m } => mask = Some(m),
            Step::Heal => mask = None,
        }
        // The state is kept up to date entry by entry; it must equal a
        // full read of the materialized document.
        for n in &nodes {
            let read = State::read(n.resolver.document(), None, base.community());
            prop_assert!(read == *n.resolver.state(), "the refreshed state differs from a full read");
        }
    }

    // Heal and deliver everything everywhere, in random orders with duplicates.
    let all: Vec<Op> = {
        let mut seen = BTreeSet::new();
        nodes
            .iter()
            .flat_map(|n| n.resolver.ops().cloned().collect::<Vec<_>>())
            .filter(|op| seen.insert(op.id()))
            .collect()
    };
    for n in nodes.iter_mut() {
        let batch = rng.scramble(&all);
        n.receive(&batch);
    }
    let mut fresh = Node::new(250, base.community());
    fresh.receive(&rng.scramble(&all));

    let json = fresh.json();
    prop_assert!(State::read(fresh.resolver.document(), None, base.community()) == *fresh.resolver.state());
    for n in &nodes {
        prop_assert_eq!(n.resolver.pending_len(), 0);
        prop_assert_eq!(n.resolver.len(), fresh.resolver.len());
        prop_assert!(n.json() == json, "replicas diverged");
        prop_assert_eq!(n.resolver.valid_heads(), fresh.resolver.valid_heads());
    }
    for (op, command) in &forbidden {
        let status = fresh.status(op);
        prop_assert!(
            status != Some(OpStatus::Valid),
            "forbidden {:?} took effect",
            command
        );
    }
    for op in &honest {
        let status = fresh.status(op);
        prop_assert!(
            status != Some(OpStatus::Invalid(Rejection::ChangeMismatch))
                && !matches!(status, Some(OpStatus::Invalid(Rejection::Equivocation))),
            "honest op {:?} rejected: {:?}",
            op.command(),
            status
        );
    }
    let p = fresh.resolver.projection();
    for b in &p.bans {
        prop_assert!(
            p.members.iter().all(|m| m.user_id != b.user_id),
            "a banned user is a member"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_and_forbidden_ops_never_apply(
        replicas in 3usize..=5,
        steps in prop::collection::vec(step(), 20..60),
        seed in any::<u64>(),
    ) {
        run(replicas, steps, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 100, ..ProptestConfig::default() })]

    /// Self-promotion, grants above one's own role and acts concurrent with
    /// one's demotion, each delivered in random orders.
    #[test]
    fn demotion_races_resolve_the_same_everywhere(seed in any::<u64>(), order in prop::collection::vec(0usize..3, 6)) {
        let c = cast();
        let mut a = community(&c);
        let mut b = replica(101, &a);
        let mut m = replica(102, &a);
        let demote = a.must(&c.owner, set_roles(&c.admin, &[]));
        let admin_act = b.must(&c.admin, Command::Ban { user: c.member.id, reason: None });
        let promote = m.forge(&c.mod1, set_roles(&c.mod1, &[role_id(1), role_id(2)]));
        let grant = m.forge(&c.mod1, create_role(9, "x", Permissions::ADMINISTRATOR, 2));
        let mut rng = Rng(seed | 1);
        let mut nodes = [a, b, m];
        for i in order {
            let j = (i + 1 + (rng.next() % 2) as usize) % 3;
            let ops: Vec<Op> = nodes[j].resolver.ops().cloned().collect();
            let batch = rng.scramble(&ops);
            nodes[i].receive(&batch);
        }
        let all: Vec<Op> = nodes.iter().flat_map(|n| n.resolver.ops().cloned().collect::<Vec<_>>()).collect();
        for n in nodes.iter_mut() {
            let batch = rng.scramble(&all);
            n.receive(&batch);
        }
        for n in &nodes {
            prop_assert!(n.is_valid(&demote));
            prop_assert_eq!(n.status(&admin_act), Some(OpStatus::Invalid(Rejection::RemovedConcurrently)));
            prop_assert!(!n.is_valid(&promote));
            prop_assert!(!n.is_valid(&grant));
            prop_assert!(n.json() == nodes[0].json());
        }
    }
}
