-- vmctl schema 0004: day-2 operations: which vmctl this is, snapshots, and the audit log by time.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.

-- One row: this installation's id. Every domain and VM directory vmctl makes carries it (the
-- ownership mark), so `vmctl reconcile` can tell its own from anyone else's on a shared node,
-- including another vmctl with another database.
CREATE TABLE installation (
    one         boolean PRIMARY KEY DEFAULT true CONSTRAINT installation_one_check CHECK (one),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation DEFAULT VALUES;

-- Snapshots of a VM's local qcow2 disks (root and data together), removed with the VM.
CREATE TABLE snapshots (
    id          bigserial PRIMARY KEY,
    vm_id       bigint NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    name        text NOT NULL CONSTRAINT snapshots_name_check CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    vm_state    text NOT NULL,      -- running (taken through the guest agent's fs-freeze) or stopped
    quiesced    boolean NOT NULL,   -- whether the guest's filesystems were frozen for it
    created_at  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    CONSTRAINT snapshots_vm_name_key UNIQUE (vm_id, name)
);

-- `vmctl events --since` without a VM reads the log by time.
CREATE INDEX events_at_idx ON events (at);
