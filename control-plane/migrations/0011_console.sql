-- The web console (issue 19).
--
-- One-time console links: a user's way into /ui/ that a portal hands out,
-- as it hands out access links. Only the token's SHA-256 is kept; taking
-- a link deletes its row, so it opens the console once.
CREATE TABLE console_links (
    token_hash  TEXT    PRIMARY KEY NOT NULL,
    user_name   TEXT    NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE INDEX console_links_expires ON console_links (expires_ms);

-- Each session's lifecycle history: what was done to it, when and by whom
-- (an API token's name, a user, or the reaper), written in the same
-- transaction as the change it records. Kept after the session is purged,
-- until the audit retention passes.
CREATE TABLE audit (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    at_ms    INTEGER NOT NULL,
    session  TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    actor    TEXT    NOT NULL,
    detail   TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX audit_session ON audit (session, seq);
CREATE INDEX audit_at ON audit (at_ms);
