-- Servers (communities), their members and channels.

CREATE TABLE servers (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    owner_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    icon_url    TEXT CHECK (icon_url IS NULL OR length(icon_url) <= 2048),
    description TEXT CHECK (description IS NULL OR length(description) <= 1024),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX servers_owner ON servers (owner_id);

CREATE TRIGGER servers_updated_at BEFORE UPDATE ON servers
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE server_members (
    server_id UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    user_id   UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    nickname  TEXT CHECK (nickname IS NULL OR length(nickname) BETWEEN 1 AND 32),
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, user_id)
);

CREATE INDEX server_members_user ON server_members (user_id);

-- Text and voice channels, and the categories that group them.
CREATE TABLE channels (
    id         UUID PRIMARY KEY,
    server_id  UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    kind       TEXT NOT NULL CHECK (kind IN ('text', 'voice', 'category')),
    parent_id  UUID REFERENCES channels(id) ON DELETE SET NULL,
    topic      TEXT CHECK (topic IS NULL OR length(topic) <= 1024),
    position   INT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (parent_id IS NULL OR parent_id <> id),
    CHECK (kind <> 'category' OR parent_id IS NULL)
);

CREATE INDEX channels_server_position ON channels (server_id, position);
CREATE INDEX channels_parent ON channels (parent_id) WHERE parent_id IS NOT NULL;

CREATE TRIGGER channels_updated_at BEFORE UPDATE ON channels
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
