-- Signed revocations of delegations (spec/identity.md §5) this node
-- knows: made by its users, or learnt from peers over gossip and sync
-- (spec/federation.md §10). One row per (delegation, user): the earliest
-- revocation wins, since a revocation holds from its `issued` on.
CREATE TABLE revocations (
    delegation_hash BYTEA NOT NULL CHECK (length(delegation_hash) = 32),
    user_id         UUID NOT NULL,
    issued          BIGINT NOT NULL,
    -- blake3 of the signed revocation, to recognise it on the wire.
    hash            BYTEA NOT NULL CHECK (length(hash) = 32),
    signed          JSONB NOT NULL,
    seq             BIGSERIAL NOT NULL UNIQUE,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (delegation_hash, user_id)
);

CREATE INDEX revocations_user ON revocations (user_id);
