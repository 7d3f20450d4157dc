//! One test per validity rule: allowed commands apply, forbidden ones are
//! refused by the builder and rejected (with the right reason) when forged.

use together_crdt::{BuildError, ChannelKind, Command, OpStatus, OverrideTarget, Rejection};
use together_protocol::permissions::Permissions;

use super::support::*;

/// `prepare` refuses the command and a forged op with it is invalid for
/// `reason`, on the forging node and on a fresh replica.
fn refused(n: &mut Node, user: &User, command: Command, reason: Rejection) {
    assert_eq!(
        n.act(user, command.clone()).err(),
        Some(BuildError::Rejected(reason.clone())),
        "{command:?}"
    );
    let before = n.json();
    // Commands whose target is missing cannot even be written as a change.
    let Some(op) = n.try_forge(user, command.clone()) else {
        return;
    };
    assert_eq!(
        n.status(&op),
        Some(OpStatus::Invalid(reason)),
        "{command:?}"
    );
    assert_eq!(n.json(), before, "a rejected op changed the projection");
    let fresh = replica(200, n);
    assert_eq!(fresh.json(), n.json());
}

#[test]
fn genesis_creates_server_everyone_role_and_owner_membership() {
    let owner = User::new(1);
    let (n, _) = Node::found(100, &owner, genesis("Together", false));
    let p = n.resolver.projection();
    let server = p
        .server
        .as_ref()
        .map(|s| (s.id, s.name.clone(), s.owner_id));
    assert_eq!(server, Some((n.community(), "Together".into(), owner.id)));
    assert_eq!(p.roles.len(), 1);
    assert_eq!(p.roles[0].id, n.community());
    assert_eq!(p.roles[0].position, 0);
    assert_eq!(
        p.roles[0].permissions,
        Permissions::DEFAULT_EVERYONE.to_stored()
    );
    assert_eq!(p.members.len(), 1);
    assert_eq!(p.members[0].user_id, owner.id);
    assert_eq!(p.members[0].public_key, Some(owner.public.to_string()));
}

#[test]
fn channels_need_manage_channels() {
    let c = cast();
    let mut n = community(&c);
    refused(
        &mut n,
        &c.member,
        create_channel(9, "nope"),
        Rejection::MissingPermission(Permissions::MANAGE_CHANNELS),
    );
    n.must(&c.mod1, create_channel(2, "mods"));
    n.must(
        &c.mod1,
        Command::UpdateChannel {
            id: channel_id(2),
            name: Some("renamed".into()),
            parent: None,
            topic: Some(Some("t".into())),
            position: Some(3),
        },
    );
    let row = n
        .resolver
        .projection()
        .channels
        .iter()
        .find(|r| r.id == channel_id(2))
        .cloned();
    assert_eq!(
        row.map(|r| (r.name, r.topic, r.position)),
        Some(("renamed".into(), Some("t".into()), 3))
    );
    refused(
        &mut n,
        &c.member,
        Command::DeleteChannel { id: channel_id(2) },
        Rejection::MissingPermission(Permissions::MANAGE_CHANNELS),
    );
    n.must(&c.mod1, Command::DeleteChannel { id: channel_id(2) });
    assert!(
        n.resolver
            .projection()
            .channels
            .iter()
            .all(|r| r.id != channel_id(2))
    );
    refused(
        &mut n,
        &c.mod1,
        Command::DeleteChannel { id: channel_id(2) },
        Rejection::UnknownChannel,
    );
}

#[test]
fn categories_parents_and_the_channel_limit_shape() {
    let c = cast();
    let mut n = community(&c);
    n.must(
        &c.owner,
        Command::CreateChannel {
            id: channel_id(5),
            name: "cat".into(),
            kind: ChannelKind::Category,
            parent: None,
            topic: None,
            position: 0,
        },
    );
    n.must(
        &c.owner,
        Command::UpdateChannel {
            id: channel_id(1),
            name: None,
            parent: Some(Some(channel_id(5))),
            topic: None,
            position: None,
        },
    );
    // A category cannot have a parent; a text channel cannot be one.
    refused(
        &mut n,
        &c.owner,
        Command::UpdateChannel {
            id: channel_id(5),
            name: None,
            parent: Some(Some(channel_id(1))),
            topic: None,
            position: None,
        },
        Rejection::InvalidField("parent"),
    );
    // Deleting the category leaves its child with no parent (ON DELETE SET NULL).
    n.must(&c.owner, Command::DeleteChannel { id: channel_id(5) });
    let general = n
        .resolver
        .projection()
        .channels
        .iter()
        .find(|r| r.id == channel_id(1))
        .cloned();
    assert_eq!(general.map(|g| g.parent_id), Some(None));
    refused(
        &mut n,
        &c.owner,
        create_channel(1, "dup"),
        Rejection::AlreadyExists,
    );
    refused(
        &mut n,
        &c.owner,
        create_channel(7, ""),
        Rejection::InvalidField("name"),
    );
}

#[test]
fn channel_override_can_take_manage_channels_away_in_one_channel() {
    let c = cast();
    let mut n = community(&c);
    n.must(
        &c.owner,
        Command::SetOverride {
            channel: channel_id(1),
            target: OverrideTarget::Role(role_id(2)),
            allow: Permissions::empty(),
            deny: Permissions::MANAGE_CHANNELS,
        },
    );
    refused(
        &mut n,
        &c.mod1,
        Command::UpdateChannel {
            id: channel_id(1),
            name: Some("x".into()),
            parent: None,
            topic: None,
            position: None,
        },
        Rejection::MissingPermission(Permissions::MANAGE_CHANNELS),
    );
    // The admin role is above overrides.
    n.must(
        &c.admin,
        Command::UpdateChannel {
            id: channel_id(1),
            name: Some("x".into()),
            parent: None,
            topic: None,
            position: None,
        },
    );
    let p = n.resolver.projection();
    assert_eq!(p.overrides.len(), 1);
    assert_eq!(p.overrides[0].role_id, Some(role_id(2)));
    assert_eq!(
        p.overrides[0].deny,
        Permissions::MANAGE_CHANNELS.to_stored()
    );
    // A moderator cannot edit the override of its own role (not below it).
    refused(
        &mut n,
        &c.mod1,
        Command::DeleteOverride {
            channel: channel_id(1),
            target: OverrideTarget::Role(role_id(2)),
        },
        Rejection::Hierarchy,
    );
    // Nor allow bits it does not have, for a role below it.
    refused(
        &mut n,
        &c.mod1,
        Command::SetOverride {
            channel: channel_id(1),
            target: OverrideTarget::Role(role_id(3)),
            allow: Permissions::MUTE_MEMBERS,
            deny: Permissions::empty(),
        },
        Rejection::PermissionEscalation,
    );
    refused(
        &mut n,
        &c.owner,
        Command::SetOverride {
            channel: channel_id(1),
            target: OverrideTarget::Role(role_id(3)),
            allow: Permissions::SEND_MESSAGES,
            deny: Permissions::SEND_MESSAGES,
        },
        Rejection::InvalidField("override overlaps"),
    );
}

#[test]
fn roles_need_manage_roles_and_stay_below_the_author() {
    let c = cast();
    let mut n = community(&c);
    refused(
        &mut n,
        &c.member,
        create_role(9, "x", Permissions::empty(), 1),
        Rejection::MissingPermission(Permissions::MANAGE_ROLES),
    );
    // A moderator (position 5) may create a role below itself...
    n.must(
        &c.mod1,
        create_role(4, "trusted", Permissions::KICK_MEMBERS, 4),
    );
    // ...but not at or above its own position,
    refused(
        &mut n,
        &c.mod1,
        create_role(5, "peer", Permissions::empty(), 5),
        Rejection::Hierarchy,
    );
    // nor with bits it does not hold,
    refused(
        &mut n,
        &c.mod1,
        create_role(6, "grant", Permissions::ADMINISTRATOR, 2),
        Rejection::PermissionEscalation,
    );
    refused(
        &mut n,
        &c.mod1,
        Command::UpdateRole {
            id: role_id(4),
            name: None,
            permissions: Some(Permissions::MANAGE_SERVER),
            color: None,
            hoist: None,
            mentionable: None,
            position: None,
        },
        Rejection::PermissionEscalation,
    );
    // nor edit its own role or one above it, nor move one above itself.
    refused(
        &mut n,
        &c.mod1,
        Command::UpdateRole {
            id: role_id(2),
            name: Some("boss".into()),
            permissions: None,
            color: None,
            hoist: None,
            mentionable: None,
            position: None,
        },
        Rejection::Hierarchy,
    );
    refused(
        &mut n,
        &c.mod1,
        Command::UpdateRole {
            id: role_id(4),
            name: None,
            permissions: None,
            color: None,
            hoist: None,
            mentionable: None,
            position: Some(7),
        },
        Rejection::Hierarchy,
    );
    refused(
        &mut n,
        &c.mod1,
        Command::DeleteRole { id: role_id(1) },
        Rejection::Hierarchy,
    );
    let everyone = n.community();
    refused(
        &mut n,
        &c.owner,
        Command::DeleteRole { id: everyone },
        Rejection::EveryoneRole,
    );
    n.must(&c.mod1, Command::DeleteRole { id: role_id(4) });
    // The admin may grant anything below itself, even bits of other roles.
    n.must(
        &c.admin,
        create_role(7, "managers", Permissions::MANAGE_SERVER, 9),
    );
    assert_eq!(n.resolver.projection().roles.len(), 5);
}

#[test]
fn self_promotion_never_takes_effect() {
    let c = cast();
    let mut n = community(&c);
    // A plain member gives themself the admin role.
    refused(
        &mut n,
        &c.member,
        set_roles(&c.member, &[role_id(1)]),
        Rejection::MissingPermission(Permissions::MANAGE_ROLES),
    );
    // A moderator gives themself the admin role (above its own).
    refused(
        &mut n,
        &c.mod1,
        set_roles(&c.mod1, &[role_id(1), role_id(2)]),
        Rejection::Hierarchy,
    );
    // A moderator raises its own role's bits.
    refused(
        &mut n,
        &c.mod1,
        Command::UpdateRole {
            id: role_id(2),
            name: None,
            permissions: Some(super::support::MOD_PERMS | Permissions::ADMINISTRATOR),
            color: None,
            hoist: None,
            mentionable: None,
            position: None,
        },
        Rejection::Hierarchy,
    );
    let mod_roles: Vec<_> = n
        .resolver
        .projection()
        .member_roles
        .iter()
        .filter(|r| r.user_id == c.mod1.id)
        .map(|r| r.role_id)
        .collect();
    assert_eq!(mod_roles, vec![role_id(2)]);
    // Granting a lower role with bits the moderator lacks is refused too.
    n.must(
        &c.owner,
        Command::UpdateRole {
            id: role_id(3),
            name: None,
            permissions: Some(Permissions::MANAGE_SERVER),
            color: None,
            hoist: None,
            mentionable: None,
            position: None,
        },
    );
    refused(
        &mut n,
        &c.mod1,
        set_roles(&c.member, &[role_id(3)]),
        Rejection::PermissionEscalation,
    );
    // Roles of members at or above the moderator are out of its reach.
    refused(
        &mut n,
        &c.mod1,
        set_roles(&c.mod2, &[]),
        Rejection::Hierarchy,
    );
}

#[test]
fn members_kicks_and_bans() {
    let c = cast();
    let mut n = community(&c);
    refused(
        &mut n,
        &c.member,
        Command::Kick { user: c.mod1.id },
        Rejection::MissingPermission(Permissions::KICK_MEMBERS),
    );
    refused(
        &mut n,
        &c.mod1,
        Command::Kick { user: c.mod2.id },
        Rejection::Hierarchy,
    );
    refused(
        &mut n,
        &c.mod1,
        Command::Kick { user: c.owner.id },
        Rejection::TargetIsOwner,
    );
    refused(
        &mut n,
        &c.admin,
        Command::Ban {
            user: c.owner.id,
            reason: None,
        },
        Rejection::TargetIsOwner,
    );
    refused(
        &mut n,
        &c.mod1,
        Command::Kick { user: c.mod1.id },
        Rejection::TargetIsSelf,
    );
    n.must(&c.mod1, Command::Kick { user: c.member.id });
    assert!(
        n.resolver
            .projection()
            .members
            .iter()
            .all(|m| m.user_id != c.member.id)
    );
    n.must(&c.member, Command::Join { invite: None });
    n.must(
        &c.mod1,
        Command::Ban {
            user: c.member.id,
            reason: Some("spam".into()),
        },
    );
    let p = n.resolver.projection();
    assert!(p.members.iter().all(|m| m.user_id != c.member.id));
    assert_eq!(
        p.bans
            .iter()
            .map(|b| (b.user_id, b.banned_by))
            .collect::<Vec<_>>(),
        vec![(c.member.id, c.mod1.id)]
    );
    refused(
        &mut n,
        &c.member,
        Command::Join { invite: None },
        Rejection::Banned,
    );
    refused(
        &mut n,
        &c.mod1,
        Command::Ban {
            user: c.member.id,
            reason: None,
        },
        Rejection::AlreadyBanned,
    );
    // Banning someone who never joined works too.
    n.must(
        &c.mod1,
        Command::Ban {
            user: c.outsider.id,
            reason: None,
        },
    );
    refused(
        &mut n,
        &c.member,
        Command::Unban {
            user: c.outsider.id,
        },
        Rejection::Banned,
    );
    n.must(&c.mod1, Command::Unban { user: c.member.id });
    n.must(&c.member, Command::Join { invite: None });
    refused(
        &mut n,
        &c.owner,
        Command::Leave,
        Rejection::OwnerCannotLeave,
    );
    n.must(&c.member, Command::Leave);
    refused(&mut n, &c.member, Command::Leave, Rejection::NotMember);
}

#[test]
fn joins_need_a_valid_invite_unless_public() {
    let owner = User::new(1);
    let a = User::new(2);
    let b = User::new(3);
    let d = User::new(4);
    let (mut n, _) = Node::found(100, &owner, genesis("Private", false));
    refused(
        &mut n,
        &a,
        Command::Join { invite: None },
        Rejection::InviteRequired,
    );
    refused(
        &mut n,
        &a,
        Command::Join {
            invite: Some("nope".into()),
        },
        Rejection::UnknownInvite,
    );
    let expires = n.clock + 3;
    n.must(
        &owner,
        Command::CreateInvite {
            code: "once".into(),
            channel: None,
            max_uses: Some(1),
            expires_at: None,
        },
    );
    n.must(
        &owner,
        Command::CreateInvite {
            code: "soon".into(),
            channel: None,
            max_uses: None,
            expires_at: Some(expires),
        },
    );
    n.must(
        &a,
        Command::Join {
            invite: Some("once".into()),
        },
    );
    refused(
        &mut n,
        &b,
        Command::Join {
            invite: Some("once".into()),
        },
        Rejection::InviteUsedUp,
    );
    n.clock = expires;
    refused(
        &mut n,
        &b,
        Command::Join {
            invite: Some("soon".into()),
        },
        Rejection::InviteExpired,
    );
    refused(
        &mut n,
        &a,
        Command::Join {
            invite: Some("once".into()),
        },
        Rejection::AlreadyMember,
    );
    refused(
        &mut n,
        &a,
        Command::CreateInvite {
            code: "x".into(),
            channel: None,
            max_uses: None,
            expires_at: None,
        },
        Rejection::InvalidField("code"),
    );
    n.must(
        &a,
        Command::CreateInvite {
            code: "mine".into(),
            channel: None,
            max_uses: None,
            expires_at: None,
        },
    );
    let uses: Vec<_> = n
        .resolver
        .projection()
        .invites
        .iter()
        .map(|i| (i.code.clone(), i.uses))
        .collect();
    assert_eq!(
        uses,
        vec![("mine".into(), 0), ("once".into(), 1), ("soon".into(), 0)]
    );
    // Only the inviter or MANAGE_SERVER may revoke.
    n.must(
        &d,
        Command::Join {
            invite: Some("mine".into()),
        },
    );
    refused(
        &mut n,
        &d,
        Command::RevokeInvite {
            code: "mine".into(),
        },
        Rejection::MissingPermission(Permissions::MANAGE_SERVER),
    );
    n.must(
        &a,
        Command::RevokeInvite {
            code: "mine".into(),
        },
    );
    n.must(
        &owner,
        Command::RevokeInvite {
            code: "soon".into(),
        },
    );
    n.must(
        &owner,
        Command::UpdateServer {
            name: None,
            icon: None,
            description: None,
            public: Some(true),
        },
    );
    n.must(&b, Command::Join { invite: None });
}

#[test]
fn nicknames_are_ones_own_unless_manage_nicknames() {
    let c = cast();
    let mut n = community(&c);
    n.must(
        &c.member,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("me".into()),
        },
    );
    refused(
        &mut n,
        &c.member,
        Command::SetNickname {
            user: c.mod1.id,
            nickname: Some("x".into()),
        },
        Rejection::MissingPermission(Permissions::MANAGE_NICKNAMES),
    );
    n.must(
        &c.mod1,
        Command::SetNickname {
            user: c.member.id,
            nickname: None,
        },
    );
    refused(
        &mut n,
        &c.mod1,
        Command::SetNickname {
            user: c.admin.id,
            nickname: Some("x".into()),
        },
        Rejection::Hierarchy,
    );
    refused(
        &mut n,
        &c.member,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("x".repeat(33)),
        },
        Rejection::InvalidField("nickname"),
    );
    // Without CHANGE_NICKNAME on @everyone, members keep their names.
    let everyone = n.community();
    n.must(
        &c.owner,
        Command::UpdateRole {
            id: everyone,
            name: None,
            permissions: Some(Permissions::DEFAULT_EVERYONE - Permissions::CHANGE_NICKNAME),
            color: None,
            hoist: None,
            mentionable: None,
            position: None,
        },
    );
    refused(
        &mut n,
        &c.member,
        Command::SetNickname {
            user: c.member.id,
            nickname: Some("me2".into()),
        },
        Rejection::MissingPermission(Permissions::CHANGE_NICKNAME),
    );
}

#[test]
fn server_settings_need_manage_server_and_ownership_moves_only_by_the_owner() {
    let c = cast();
    let mut n = community(&c);
    let rename = Command::UpdateServer {
        name: Some("Mine".into()),
        icon: None,
        description: None,
        public: None,
    };
    refused(
        &mut n,
        &c.mod1,
        rename.clone(),
        Rejection::MissingPermission(Permissions::MANAGE_SERVER),
    );
    n.must(&c.admin, rename);
    refused(
        &mut n,
        &c.admin,
        Command::TransferOwnership {
            new_owner: c.admin.id,
        },
        Rejection::NotOwner,
    );
    refused(
        &mut n,
        &c.owner,
        Command::TransferOwnership {
            new_owner: c.outsider.id,
        },
        Rejection::UnknownMember,
    );
    n.must(
        &c.owner,
        Command::TransferOwnership {
            new_owner: c.member.id,
        },
    );
    assert_eq!(
        n.resolver.projection().server.as_ref().map(|s| s.owner_id),
        Some(c.member.id)
    );
    n.must(&c.member, Command::Kick { user: c.owner.id });
}

#[test]
fn an_invite_counts_each_user_once_and_concurrent_joins_all_count() {
    let owner = User::new(1);
    let a = User::new(2);
    let b = User::new(3);
    let c = User::new(4);
    let (mut n, _) = Node::found(100, &owner, genesis("Private", false));
    n.must(
        &owner,
        Command::CreateInvite {
            code: "pair".into(),
            channel: None,
            max_uses: Some(2),
            expires_at: None,
        },
    );
    let uses = |n: &Node| {
        n.resolver
            .projection()
            .invites
            .iter()
            .find(|i| i.code == "pair")
            .map(|i| i.uses)
    };
    let join = || Command::Join {
        invite: Some("pair".into()),
    };
    // Joining again after leaving does not use the invite again.
    n.must(&a, join());
    n.must(&a, Command::Leave);
    n.must(&a, join());
    assert_eq!(uses(&n), Some(1));
    // Two nodes let b and c in at the same time: both joins count, so the
    // invite is used up on both once they sync.
    let mut m = Node::new(101, n.community());
    m.sync_from(&n);
    n.must(&b, join());
    m.must(&c, join());
    n.sync_from(&m);
    m.sync_from(&n);
    assert_eq!(uses(&n), Some(3));
    assert_eq!(n.json(), m.json());
    refused(&mut n, &User::new(5), join(), Rejection::InviteUsedUp);
}

#[test]
fn an_adoption_genesis_keeps_an_underived_id_and_only_such_an_id() {
    let owner = User::new(1);
    // A community from before signed state: a UUIDv7 id, derived from nothing.
    let old = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    assert_eq!(old.get_version_num(), 7);
    let mut n = Node::new(100, old);
    let unsigned = together_crdt::adoption_op(old, &owner.public, &n.actor, genesis("Old", true), T0)
        .unwrap_or_else(|e| panic!("adoption: {e}"));
    let op = unsigned
        .sign(&n.key, &delegation(&owner, &n.public), true)
        .unwrap_or_else(|e| panic!("sign: {e}"));
    n.resolver.add_op(op.clone());
    assert_eq!(n.status(&op), Some(OpStatus::Valid));
    assert_eq!(n.resolver.projection().server.as_ref().map(|s| s.owner_id), Some(owner.id));
    n.must(&owner, create_channel(1, "kept"));
    assert_eq!(replica(200, &n).json(), n.json());

    // A derived (UUIDv8) id cannot be adopted: it belongs to its owner's key.
    let derived = together_crdt::community_id(&User::new(2).public, &[9; 16]);
    let m = Node::new(101, derived);
    assert_eq!(
        together_crdt::adoption_op(derived, &owner.public, &m.actor, genesis("Theirs", true), T0).err(),
        Some(BuildError::Rejected(Rejection::BadCommunityId))
    );
}
