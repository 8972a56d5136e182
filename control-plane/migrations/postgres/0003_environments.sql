-- Workshop environments: a workshop's metadata, a pool of backends each
-- serving one session at a time, capacity and reserved (pre-created)
-- sessions, and the defaults of the sessions made from it.

CREATE TABLE environments (
    name           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- A JSON object: name, title, description, vendor, authors, difficulty,
    -- duration, tags, logo, url.
    workshop       TEXT COLLATE "C" NOT NULL,
    duration_secs  BIGINT,
    capacity       BIGINT   NOT NULL,
    reserved       BIGINT   NOT NULL,
    state          TEXT COLLATE "C" NOT NULL,
    -- A JSON array of http(s)://host:port.
    targets        TEXT COLLATE "C" NOT NULL,
    tls_verify     BOOLEAN  NOT NULL,
    slug_prefix    TEXT COLLATE "C",
    extendable     BOOLEAN  NOT NULL,
    created_ms     BIGINT   NOT NULL,
    -- The number of the next session (`<name>-s001`, ...).
    next_session   BIGINT   NOT NULL
);

-- When a pending session must be activated by (the workshop request's
-- timeout); NULL: its creation plus the configured activation deadline.
-- Reserved sessions, waiting for a user, have none that passes.
ALTER TABLE sessions ADD COLUMN activate_by_ms BIGINT;
