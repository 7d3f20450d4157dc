-- Voice states, invites and bans.

-- A user is in at most one voice channel at a time (the seed keyed this by
-- (user, channel), which allowed several).
CREATE TABLE voice_states (
    user_id     UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    server_id   UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    channel_id  UUID NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    session_id  TEXT,
    self_mute   BOOLEAN NOT NULL DEFAULT false,
    self_deaf   BOOLEAN NOT NULL DEFAULT false,
    server_mute BOOLEAN NOT NULL DEFAULT false,
    server_deaf BOOLEAN NOT NULL DEFAULT false,
    joined_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX voice_states_channel ON voice_states (channel_id);

CREATE TABLE invites (
    code       TEXT PRIMARY KEY CHECK (length(code) BETWEEN 4 AND 32),
    server_id  UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    channel_id UUID REFERENCES channels(id) ON DELETE SET NULL,
    inviter_id UUID REFERENCES users(id) ON DELETE SET NULL,
    max_uses   INT CHECK (max_uses IS NULL OR max_uses > 0),
    uses       INT NOT NULL DEFAULT 0 CHECK (uses >= 0),
    expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX invites_server ON invites (server_id);

CREATE TABLE bans (
    server_id  UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    reason     TEXT CHECK (reason IS NULL OR length(reason) <= 512),
    banned_by  UUID REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, user_id)
);
