-- Roles, role assignments and per-channel permission overrides.
--
-- Every server has an @everyone role whose id equals the server's id and
-- whose position is 0; other roles have positions from 1 upwards, higher
-- meaning more senior. Permissions are the bit flags of
-- together_protocol::permissions stored as BIGINT.

CREATE TABLE roles (
    id          UUID PRIMARY KEY,
    server_id   UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    permissions BIGINT NOT NULL DEFAULT 0,
    color       INT CHECK (color IS NULL OR color BETWEEN 0 AND 16777215),
    hoist       BOOLEAN NOT NULL DEFAULT false,
    mentionable BOOLEAN NOT NULL DEFAULT false,
    position    INT NOT NULL DEFAULT 0 CHECK (position >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX roles_server_position ON roles (server_id, position);

CREATE TABLE member_roles (
    server_id UUID NOT NULL,
    user_id   UUID NOT NULL,
    role_id   UUID NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (server_id, user_id, role_id),
    FOREIGN KEY (server_id, user_id) REFERENCES server_members(server_id, user_id) ON DELETE CASCADE
);

CREATE INDEX member_roles_role ON member_roles (role_id);

-- The seed's PRIMARY KEY (channel_id, COALESCE(role_id, user_id)) is not
-- valid SQL: a surrogate key plus one unique index per target kind.
CREATE TABLE channel_permission_overrides (
    id         UUID PRIMARY KEY,
    channel_id UUID NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    role_id    UUID REFERENCES roles(id) ON DELETE CASCADE,
    user_id    UUID REFERENCES users(id) ON DELETE CASCADE,
    allow      BIGINT NOT NULL DEFAULT 0,
    deny       BIGINT NOT NULL DEFAULT 0,
    CHECK ((role_id IS NOT NULL AND user_id IS NULL) OR (role_id IS NULL AND user_id IS NOT NULL)),
    CHECK (allow & deny = 0)
);

CREATE UNIQUE INDEX channel_overrides_role ON channel_permission_overrides (channel_id, role_id) WHERE role_id IS NOT NULL;
CREATE UNIQUE INDEX channel_overrides_user ON channel_permission_overrides (channel_id, user_id) WHERE user_id IS NOT NULL;
