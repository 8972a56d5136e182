-- The control plane's schema. Kept to portable SQL (SQLite now, PostgreSQL
-- for several nodes): TEXT, BIGINT and BOOLEAN columns, times as Unix
-- milliseconds, no engine-specific functions.

CREATE TABLE users (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    email       TEXT,
    first_name  TEXT,
    last_name   TEXT,
    created_ms  BIGINT  NOT NULL
);

-- "groups" is a keyword in some SQL dialects.
CREATE TABLE user_groups (
    name        TEXT    NOT NULL PRIMARY KEY,
    created_ms  BIGINT  NOT NULL
);

CREATE TABLE group_members (
    group_name  TEXT    NOT NULL REFERENCES user_groups (name) ON DELETE CASCADE,
    user_name   TEXT    NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, user_name)
);

CREATE TABLE sessions (
    name              TEXT     NOT NULL PRIMARY KEY,
    kind              TEXT     NOT NULL,
    remote_host       TEXT,
    remote_port       INTEGER,
    url               TEXT,
    https             BOOLEAN  NOT NULL,
    tls_verify        BOOLEAN  NOT NULL,
    slug              TEXT,
    strip_prefix      BOOLEAN  NOT NULL,
    rewrite_host      BOOLEAN  NOT NULL,
    custom_domain     TEXT,
    workspace_port    INTEGER,
    owner             TEXT     NOT NULL REFERENCES users (name),
    public            BOOLEAN  NOT NULL,
    state             TEXT     NOT NULL,
    created_ms        BIGINT   NOT NULL,
    activated_ms      BIGINT,
    expires_ms        BIGINT,
    last_activity_ms  BIGINT,
    paused_ms         BIGINT,
    state_changed_ms  BIGINT   NOT NULL,
    duration_secs     BIGINT,
    idle_timeout_secs BIGINT,
    extendable        BOOLEAN  NOT NULL,
    environment       TEXT,
    -- A JSON object of string labels.
    labels            TEXT     NOT NULL
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
    session_name  TEXT  NOT NULL REFERENCES sessions (name) ON DELETE CASCADE,
    group_name    TEXT  NOT NULL REFERENCES user_groups (name) ON DELETE CASCADE,
    PRIMARY KEY (session_name, group_name)
);
CREATE INDEX session_groups_group ON session_groups (group_name);

-- API tokens besides the admin token. Only a SHA-256 of each is stored.
CREATE TABLE api_tokens (
    name        TEXT    NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL,
    hash        TEXT    NOT NULL UNIQUE,
    created_ms  BIGINT  NOT NULL
);
