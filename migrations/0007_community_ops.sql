-- Signed community ops (together-crdt): every op this node has seen, valid
-- or not, in the order it was stored. The projection tables (servers,
-- channels, roles, server_members, member_roles,
-- channel_permission_overrides, bans, invites) are derived from the valid
-- ones. No foreign key to servers: ops arrive before (and outlive) the
-- projection rows they produce.
CREATE TABLE community_ops (
    id          BYTEA PRIMARY KEY CHECK (length(id) = 32),
    seq         BIGSERIAL NOT NULL UNIQUE,
    server_id   UUID NOT NULL,
    parents     BYTEA[] NOT NULL,
    wire        BYTEA NOT NULL CHECK (length(wire) <= 65536),
    -- 'valid', 'pending' or the rejection code (`invalid_parent`, ...).
    status      TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX community_ops_server ON community_ops (server_id, seq);
