-- The outbox and catch-up (spec/federation.md §6).
--
-- A signed message event is stored in the same transaction as the write
-- it describes; a publisher tails the table and gossips what this node
-- signed, and peers pull what they missed. Both read in (tx_id, seq)
-- order and only below the oldest running transaction's id, so a
-- transaction that commits late can never land behind a reader's cursor.
ALTER TABLE federation_events
    ADD COLUMN tx_id BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    -- Signed by this node (the publisher gossips these; peers' events
    -- were gossiped by their own nodes).
    ADD COLUMN local BOOLEAN NOT NULL DEFAULT false;

CREATE INDEX federation_events_server_order ON federation_events (server_id, tx_id, seq);
CREATE INDEX federation_events_local_order ON federation_events (tx_id, seq) WHERE local;

-- How far the publisher has gossiped this node's events (one row).
CREATE TABLE federation_outbox (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    tx_id     BIGINT NOT NULL,
    seq       BIGINT NOT NULL
);

-- Events stored before this migration were handled by the old outbox.
INSERT INTO federation_outbox (tx_id, seq)
SELECT COALESCE(max(tx_id), 0), COALESCE(max(seq), 0) FROM federation_events;

-- How far this node has caught up on each community's events from each
-- peer, in the peer's (tx_id, seq) order.
CREATE TABLE federation_catchup (
    peer_id   TEXT NOT NULL,
    server_id UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    tx_id     BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (peer_id, server_id)
);
