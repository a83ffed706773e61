-- vmctl schema 0010: idempotency keys of the HTTP API (POST /api/v1/vm, header Idempotency-Key).
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.
--
-- One row per (scope, key) once the first request with that key has an answer: a later request
-- with the key and the same fingerprint gets status and body back as they were; another
-- fingerprint is refused (422). While the first request runs, its replica holds a PostgreSQL
-- advisory lock on the key (vmctl.adapters.store.idempotency), not a row: a replica that dies lets
-- go at once (PostgreSQL ends its session), so no "in progress" row can outlive its owner.
-- Only final answers are kept (2xx, and 4xx but 400): after bad input or a server error
-- (PostgreSQL or a node unreachable) a retry with the same key runs again. Rows expire after 24 h; every answer kept deletes up to 100
-- expired rows (by the index on expires_at), so the table holds about one day of keys.
CREATE TABLE idempotency_keys (
    scope       text NOT NULL,          -- whose key: the API token's project
    key         text NOT NULL CONSTRAINT idempotency_key_length CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint text NOT NULL,          -- sha256 of method, path and JSON body
    status      smallint NOT NULL CONSTRAINT idempotency_kept_status CHECK (status BETWEEN 200 AND 499),
    body        json NOT NULL,          -- json, not jsonb: kept as written, keys in order
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
