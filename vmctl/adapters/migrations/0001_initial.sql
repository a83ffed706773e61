-- vmctl schema 0001: VMs, nodes and the event log.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.

CREATE TABLE vms (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CONSTRAINT vms_name_check CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    node        text NOT NULL,
    state       text NOT NULL
                CONSTRAINT vms_state_check
                CHECK (state IN ('creating', 'running', 'stopped', 'deleting', 'error')),
    ram_mb      integer NOT NULL CONSTRAINT vms_ram_mb_check CHECK (ram_mb > 0),
    cpu         integer NOT NULL CONSTRAINT vms_cpu_check CHECK (cpu > 0),
    disk_gb     integer NOT NULL CONSTRAINT vms_disk_gb_check CHECK (disk_gb >= 0),
    root_gb     integer NOT NULL CONSTRAINT vms_root_gb_check CHECK (root_gb > 0),
    image       text NOT NULL,
    mac         text NOT NULL,
    host_key    text NULL,  -- the guest's SSH host public key ("ssh-ed25519 AAAA..."), if known
    ip          inet NULL,
    ip_state    text NULL
                CONSTRAINT vms_ip_state_check CHECK (ip_state IN ('expected', 'confirmed')),
    group_name  text NULL,
    project     text NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT vms_ip_pair_check CHECK ((ip IS NULL) = (ip_state IS NULL))
);

CREATE INDEX vms_node_idx ON vms (node);

CREATE TABLE nodes (
    name        text PRIMARY KEY,
    enabled     boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    vm          text NULL,
    node        text NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    result      text NOT NULL CONSTRAINT events_result_check CHECK (result IN ('ok', 'failed', 'started')),
    detail      jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX events_vm_at_idx ON events (vm, at);
