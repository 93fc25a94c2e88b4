-- Example schema: a chat app's messages table, as rowcast finds it.
CREATE TABLE IF NOT EXISTS messages (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    room_id    BIGINT          NOT NULL,
    author     VARCHAR(100)    NOT NULL,
    body       TEXT            NOT NULL,
    created_at TIMESTAMP(3)    NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY messages_room_id (room_id)
) DEFAULT CHARSET = utf8mb4;
