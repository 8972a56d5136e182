-- A session with a slug shares the portal host's browser origin with every
-- other slug session; one whose owner is not alone there is stored only
-- when its creator accepted that (`shared_origin`). Sessions stored before
-- this column existed did not say: false.
ALTER TABLE sessions ADD COLUMN shared_origin BOOLEAN NOT NULL DEFAULT FALSE;
