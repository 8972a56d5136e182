-- OAuth2 tokens for the workshop API (the training portal's /oauth2/token/),
-- stored only as SHA-256. A refresh token names the access token it renews.
CREATE TABLE oauth_tokens (
    hash        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind        TEXT COLLATE "C" NOT NULL,
    username    TEXT COLLATE "C" NOT NULL,
    expires_ms  BIGINT  NOT NULL
);
CREATE INDEX oauth_tokens_expires ON oauth_tokens (expires_ms);
