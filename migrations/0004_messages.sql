-- Messages, reactions and attachments.
--
-- Message ids are UUIDv7, so ordering by id is ordering by creation time and
-- pagination is a keyset walk over (channel_id, id). Deleted messages stay as
-- tombstones (content cleared) so replies and federation keep their anchor.

CREATE TABLE messages (
    id            UUID PRIMARY KEY,
    channel_id    UUID NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    server_id     UUID NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    author_id     UUID NOT NULL REFERENCES users(id),
    content       TEXT NOT NULL CHECK (length(content) <= 4000),
    reply_to      UUID REFERENCES messages(id) ON DELETE SET NULL,
    edited_at     TIMESTAMPTZ,
    deleted       BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    search_vector TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', content)) STORED
);

-- History pages: newest first within a channel.
CREATE INDEX messages_channel_recent ON messages (channel_id, id DESC) WHERE deleted = false;
-- A user's messages (moderation, "from:" searches).
CREATE INDEX messages_author_recent ON messages (author_id, id DESC) WHERE deleted = false;
-- Search (node/src/messages.rs): common words are found by walking a
-- server's newest messages through messages_server_recent and filtering;
-- rare words through the GIN index, which lists every match.
CREATE INDEX messages_search ON messages USING GIN (search_vector) WHERE deleted = false;
CREATE INDEX messages_server_recent ON messages (server_id, id DESC) WHERE deleted = false;
CREATE INDEX messages_reply_to ON messages (reply_to) WHERE reply_to IS NOT NULL;

CREATE TABLE reactions (
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL CHECK (length(emoji) BETWEEN 1 AND 64),
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, emoji, user_id)
);

-- Files are stored once per content (blake3 hash) under the data directory;
-- an attachment row is one use of a file. Uploaded files wait with no
-- message until the uploader sends the message that carries them.
CREATE TABLE attachments (
    id           UUID PRIMARY KEY,
    channel_id   UUID NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    uploader_id  UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    message_id   UUID REFERENCES messages(id) ON DELETE CASCADE,
    filename     TEXT NOT NULL CHECK (length(filename) BETWEEN 1 AND 255),
    content_hash BYTEA NOT NULL CHECK (length(content_hash) = 32),
    file_size    BIGINT NOT NULL CHECK (file_size >= 0),
    mime_type    TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX attachments_message ON attachments (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX attachments_pending ON attachments (uploader_id, created_at) WHERE message_id IS NULL;
CREATE INDEX attachments_content ON attachments (content_hash);

-- The planner's estimate of how many live messages match a text query
-- (from the column's most-common-lexeme statistics). Search uses it to
-- decide how far to walk the newest messages before asking the GIN index,
-- which reads every match. VOLATILE because PostgreSQL allows EXPLAIN only
-- there; it reads nothing but statistics.
CREATE FUNCTION message_search_estimate(query tsquery) RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
DECLARE
    plan json;
BEGIN
    IF numnode(query) = 0 THEN
        RETURN 0;
    END IF;
    EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM messages WHERE search_vector @@ $1 AND NOT deleted'
        INTO plan USING query;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::bigint;
END
$$;
