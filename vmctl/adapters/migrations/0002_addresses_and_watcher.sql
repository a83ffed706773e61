-- vmctl schema 0002: addresses vmctl assigns on managed networks, and the watcher's heartbeat.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.

-- The address reserved for a VM in a managed network's DHCP. ``ip_pool`` names the address space
-- (the network's subnet): no two VMs ever hold the same address of one pool.
ALTER TABLE vms ADD COLUMN ip_pool text NULL;
ALTER TABLE vms ADD COLUMN reserved_ip inet NULL;
ALTER TABLE vms ADD CONSTRAINT vms_reserved_pair_check
    CHECK ((ip_pool IS NULL) = (reserved_ip IS NULL));
CREATE UNIQUE INDEX vms_pool_reserved_ip_key ON vms (ip_pool, reserved_ip)
    WHERE reserved_ip IS NOT NULL;

-- When each address of a pool was last given back: new VMs get the address freed longest ago
-- (or never used), so a lease still held by a deleted VM is not handed out again at once.
CREATE TABLE released_addresses (
    ip_pool     text NOT NULL,
    ip          inet NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ip_pool, ip)
);

-- Long-running vmctl processes (watch-ip) say here that they are alive.
CREATE TABLE heartbeats (
    process     text PRIMARY KEY,   -- e.g. "watch-ip@manager1:4242"
    kind        text NOT NULL,      -- e.g. "watch-ip"
    at          timestamptz NOT NULL DEFAULT now(),
    detail      jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX events_action_at_idx ON events (action, at);
