-- vmctl schema 0003: API tokens (per project) and the per-VM phone-home secret.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.

CREATE TABLE api_tokens (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL CONSTRAINT api_tokens_project_check
                CHECK (project ~ '^[a-z][a-z0-9-]{0,62}$'),
    name        text NOT NULL DEFAULT '',
    token_hash  text NOT NULL UNIQUE,   -- SHA-256 (hex) of the token; the token is never stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz NULL
);

-- SHA-256 (hex) of the one-time secret a new VM's cloud-init sends to the phone-home endpoint;
-- NULL once used (or when the VM was made without one).
ALTER TABLE vms ADD COLUMN phone_home_hash text NULL;

CREATE INDEX vms_project_idx ON vms (project);
