-- What a training-portal request brings with it (issue 16), kept with the
-- session it allocated, as the portal keeps them: the client's analytics
-- webhook and its request parameters, a JSON array of {"name", "value"}.
ALTER TABLE sessions ADD COLUMN analytics_url TEXT COLLATE "C";
ALTER TABLE sessions ADD COLUMN parameters TEXT COLLATE "C" NOT NULL DEFAULT '[]';
-- The session's route sends its parameters to the backend as
-- X-Workshop-Param-<name> headers: copied from its environment when a
-- request takes the session.
ALTER TABLE sessions ADD COLUMN parameter_headers BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE environments ADD COLUMN parameter_headers BOOLEAN NOT NULL DEFAULT FALSE;

-- Workshop access links stay valid until their deadline, as the portal's
-- do, so that a browser reloading one is not locked out: the first use
-- (used_ms) binds the link to the browser it gave a cookie to, and only
-- that browser may open it again. Links from POST /api/v1/sessions/{name}/access
-- stay one-time (reusable false): opening one deletes it.
ALTER TABLE access_tokens ADD COLUMN reusable BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE access_tokens ADD COLUMN used_ms BIGINT;
CREATE INDEX access_tokens_session_user ON access_tokens (session_name, user_name);
