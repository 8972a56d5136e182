-- Whether a session's route passes on upgrades to any protocol (h2c, a
-- custom tunnel), not only WebSocket. Existing sessions keep to WebSocket.
ALTER TABLE sessions ADD COLUMN allow_any_upgrade BOOLEAN NOT NULL DEFAULT FALSE;
