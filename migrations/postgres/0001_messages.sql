-- Example schema: a chat app's messages table, as rowcast finds it.
CREATE TABLE IF NOT EXISTS messages (
    id         bigserial PRIMARY KEY,
    room_id    bigint      NOT NULL,
    author     text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room_id);
