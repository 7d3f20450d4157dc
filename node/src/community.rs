//! Structural changes to a server: channels, roles, members, invites, bans.
