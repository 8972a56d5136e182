-- The control plane's schema on PostgreSQL: ../0001_init.sql's, column for
-- column (a test compares the two after migrating), with BIGINT where SQLite
-- says INTEGER so that every integer column reads back as a 64-bit value,
-- and every TEXT column in the "C" collation: byte order, as SQLite's BINARY,
-- so that listings sort alike on both and the slug range of
-- live_slug_neighbours (`slug >= 'a/' AND slug < 'a0'`) holds whatever the
-- database's locale (en_US would sort 'a/b' after 'a0').

CREATE TABLE users (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    email       TEXT COLLATE "C",
    first_name  TEXT COLLATE "C",
    last_name   TEXT COLLATE "C",
    created_ms  BIGINT  NOT NULL
);

-- "groups" is a keyword in some SQL dialects.
CREATE TABLE user_groups (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_ms  BIGINT  NOT NULL
);

CREATE TABLE group_members (
    group_name  TEXT COLLATE "C" NOT NULL REFERENCES user_groups (name) ON DELETE CASCADE,
    user_name   TEXT COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, user_name)
);

CREATE TABLE sessions (
    name              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind              TEXT COLLATE "C" NOT NULL,
    remote_host       TEXT COLLATE "C",
    remote_port       BIGINT,
    url               TEXT COLLATE "C",
    https             BOOLEAN  NOT NULL,
    tls_verify        BOOLEAN  NOT NULL,
    slug              TEXT COLLATE "C",
    strip_prefix      BOOLEAN  NOT NULL,
    rewrite_host      BOOLEAN  NOT NULL,
    custom_domain     TEXT COLLATE "C",
    workspace_port    BIGINT,
    owner             TEXT COLLATE "C" NOT NULL REFERENCES users (name),
    public            BOOLEAN  NOT NULL,
    state             TEXT COLLATE "C" NOT NULL,
    created_ms        BIGINT   NOT NULL,
    activated_ms      BIGINT,
    expires_ms        BIGINT,
    last_activity_ms  BIGINT,
    paused_ms         BIGINT,
    state_changed_ms  BIGINT   NOT NULL,
    duration_secs     BIGINT,
    idle_timeout_secs BIGINT,
    extendable        BOOLEAN  NOT NULL,
    environment       TEXT COLLATE "C",
    -- A JSON object of string labels.
    labels            TEXT COLLATE "C" NOT NULL
);

-- A slug or custom domain belongs to one session that can still be used;
-- expired and deleted records keep theirs until they are purged.
CREATE UNIQUE INDEX sessions_live_slug ON sessions (slug)
    WHERE state NOT IN ('expired', 'deleted');
CREATE UNIQUE INDEX sessions_live_custom_domain ON sessions (custom_domain)
    WHERE state NOT IN ('expired', 'deleted');
CREATE INDEX sessions_state ON sessions (state);
CREATE INDEX sessions_owner ON sessions (owner);

CREATE TABLE session_groups (
    session_name  TEXT COLLATE "C" NOT NULL REFERENCES sessions (name) ON DELETE CASCADE,
    group_name    TEXT COLLATE "C" NOT NULL REFERENCES user_groups (name) ON DELETE CASCADE,
    PRIMARY KEY (session_name, group_name)
);
CREATE INDEX session_groups_group ON session_groups (group_name);

-- API tokens besides the admin token. Only a SHA-256 of each is stored.
CREATE TABLE api_tokens (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind        TEXT COLLATE "C" NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_ms  BIGINT  NOT NULL
);
