-- The web console (issue 19); see the SQLite migration of the same number.
CREATE TABLE console_links (
    token_hash  TEXT COLLATE "C" PRIMARY KEY,
    user_name   TEXT COLLATE "C" NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX console_links_expires ON console_links (expires_ms);

CREATE TABLE audit (
    seq      BIGSERIAL PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    session  TEXT COLLATE "C" NOT NULL,
    action   TEXT COLLATE "C" NOT NULL,
    actor    TEXT COLLATE "C" NOT NULL,
    detail   TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE INDEX audit_session ON audit (session, seq);
CREATE INDEX audit_at ON audit (at_ms);
