-- The change log: one row per change that other control-plane replicas on
-- the same database must learn of (a session, a group's members, the API
-- tokens, the cookie signing keys), in commit order: a writer takes
-- pg_advisory_xact_lock before its row, so sequence order is commit order
-- and a reader never sees a later row before an earlier one. A replica
-- applies the rows after the last one it saw, re-reading what each names.
CREATE TABLE changes (
    seq     BIGSERIAL PRIMARY KEY,
    kind    TEXT COLLATE "C" NOT NULL,
    name    TEXT COLLATE "C" NOT NULL,
    origin  TEXT COLLATE "C" NOT NULL,
    at_ms   BIGINT  NOT NULL
);
CREATE INDEX changes_at ON changes (at_ms);
