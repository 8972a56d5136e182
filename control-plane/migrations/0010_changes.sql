-- The change log: one row per change that other control-plane replicas on
-- the same database must learn of (a session, a group's members, the API
-- tokens, the cookie signing keys), in commit order. A replica applies the
-- rows after the last one it saw, re-reading what each names, so a row
-- applied twice changes nothing and none is skipped.
CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    kind    TEXT    NOT NULL,
    name    TEXT    NOT NULL,
    origin  TEXT    NOT NULL,
    at_ms   INTEGER NOT NULL
);
CREATE INDEX changes_at ON changes (at_ms);
