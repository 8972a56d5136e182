-- Browser access: one-time access links and the keys that sign cookies.

-- An access link's token, stored only as its SHA-256. One-time: opening the
-- link deletes the row in the transaction that activates the session.
CREATE TABLE access_tokens (
    hash          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    session_name  TEXT COLLATE "C" NOT NULL REFERENCES sessions (name) ON DELETE CASCADE,
    user_name     TEXT COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    path          TEXT COLLATE "C" NOT NULL,
    created_ms    BIGINT  NOT NULL,
    expires_ms    BIGINT  NOT NULL
);
CREATE INDEX access_tokens_expires ON access_tokens (expires_ms);

-- Cookie signing keys: the current one (retired_ms NULL) and the one it
-- replaced, which verifies until retired_ms plus the grace period.
-- The secret is base64; a key that signs cannot be stored as a hash.
CREATE TABLE signing_keys (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    secret      TEXT COLLATE "C" NOT NULL,
    created_ms  BIGINT  NOT NULL,
    retired_ms  BIGINT
);
