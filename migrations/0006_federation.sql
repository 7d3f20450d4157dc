-- Federation: peers, delegations, signed message events, backfill cursors,
-- and which communities are shared with other nodes (spec/federation.md).

-- Peers this node has been connected to, redialed at start.
CREATE TABLE peers (
    peer_id    TEXT PRIMARY KEY CHECK (length(peer_id) BETWEEN 1 AND 128),
    addrs      TEXT[] NOT NULL DEFAULT '{}',
    last_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Signed delegations (spec/identity.md §4) this node knows: its own, for
-- the users it acts for, and other nodes', learnt from their events.
CREATE TABLE delegations (
    hash       BYTEA PRIMARY KEY CHECK (length(hash) = 32),
    user_id    UUID NOT NULL,
    node_key   BYTEA NOT NULL CHECK (length(node_key) = 32),
    issued     BIGINT NOT NULL,
    expires    BIGINT NOT NULL,
    signed     JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX delegations_user_node ON delegations (user_id, node_key, expires DESC);

-- Communities shared with other nodes. `home_peer` is the node whose
-- structure is authoritative until signed community ops replace snapshots;
-- NULL when this node is the home.
CREATE TABLE federated_servers (
    server_id     UUID PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    home_peer     TEXT,
    state_version BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every signed message event this node made or accepted, in arrival order
-- (`seq`), so it can serve backfill. The hash names the event; seeing it
-- again over gossip is a replay.
CREATE TABLE federation_events (
    hash        BYTEA PRIMARY KEY CHECK (length(hash) = 32),
    seq         BIGSERIAL NOT NULL UNIQUE,
    server_id   UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    channel_id  UUID NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    envelope    JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX federation_events_channel ON federation_events (channel_id, seq);

-- How far this node has backfilled each channel from each peer (the
-- peer's `seq`).
CREATE TABLE federation_cursors (
    peer_id    TEXT NOT NULL,
    channel_id UUID NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (peer_id, channel_id)
);
