-- vmctl schema 0005: base images, where `vmctl images import` put them.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.

-- The last import of each image in each location: a node's name (a qcow2 file at the image's
-- path on a node with dir storage) or an RBD pool's key (pool@monitors: the image NAME and its
-- snapshot NAME@base, shared by the pool's nodes). Every import is also in the event log.
CREATE TABLE images (
    name        text NOT NULL CONSTRAINT images_name_check CHECK (name ~ '^[a-z][a-z0-9.-]{0,62}$'),
    location    text NOT NULL CONSTRAINT images_location_check CHECK (location <> ''),
    sha256      text NOT NULL CONSTRAINT images_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes  bigint NOT NULL CONSTRAINT images_size_check CHECK (size_bytes >= 0),
    imported_at timestamptz NOT NULL DEFAULT now(),
    imported_by text NOT NULL,
    CONSTRAINT images_pkey PRIMARY KEY (name, location)
);
