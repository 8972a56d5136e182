-- Refresh rotation and revocation (issue 16), as django-oauth-toolkit does
-- them: a refresh token names the access token issued with it, so that
-- using or revoking the refresh token also ends that access token. Tokens
-- stored before this column existed name none: using or revoking such a
-- refresh token ends only itself, and its access token runs to its expiry.
ALTER TABLE oauth_tokens ADD COLUMN access_hash TEXT COLLATE "C";
