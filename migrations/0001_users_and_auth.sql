-- Users and their sign-in sessions.
--
-- A user's id is derived from their ed25519 public key (see spec/identity.md),
-- so every node computes the same id for the same person. Password accounts
-- are the ones whose home is this node: they have a password hash and the
-- node keeps their secret key, encrypted with the node's key-encryption key.
-- Users who signed in with their own key, and users known from other nodes,
-- have neither.

CREATE TABLE users (
    id                   UUID PRIMARY KEY,
    public_key           BYTEA NOT NULL UNIQUE CHECK (length(public_key) = 32),
    username             TEXT NOT NULL CHECK (length(username) BETWEEN 1 AND 32),
    email                TEXT CHECK (email IS NULL OR length(email) <= 254),
    password_hash        TEXT,
    encrypted_secret_key BYTEA,
    avatar_url           TEXT CHECK (avatar_url IS NULL OR length(avatar_url) <= 2048),
    status               TEXT NOT NULL DEFAULT 'online'
                         CHECK (status IN ('online', 'away', 'dnd', 'invisible')),
    custom_status        TEXT CHECK (custom_status IS NULL OR length(custom_status) <= 128),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((password_hash IS NULL) = (encrypted_secret_key IS NULL))
);

-- Usernames are unique among this node's own password accounts only;
-- elsewhere a user is shown as name#abcd (first hex digits of the id).
CREATE UNIQUE INDEX users_local_username ON users (lower(username)) WHERE password_hash IS NOT NULL;
CREATE UNIQUE INDEX users_email ON users (lower(email)) WHERE email IS NOT NULL;

CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- One row per signed-in device. The refresh token rotates on every use;
-- every token ever issued to the session is remembered so that presenting
-- an already-used one (a stolen copy) revokes the whole session.
CREATE TABLE sessions (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_agent  TEXT,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_active TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id UUID NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    used_at    TIMESTAMPTZ
);

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
