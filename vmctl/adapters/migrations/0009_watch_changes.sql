-- vmctl schema 0009: what changed in vms since a version, for the watcher.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.
--
-- `vmctl watch-ip` keeps the VMs waiting for an address (and the addresses it confirmed) in
-- memory. Reading them whole whenever the vms table moved cost a second of CPU per change at
-- 100,000 VMs; now each row carries the version of schema 0007 at which it last changed, and each
-- deleted row leaves a tombstone with the version of its delete, so a watcher that read at version
-- V asks only for the rows and tombstones newer than V.
--
-- Each changed row takes the next number of a sequence, under the lock of vms_version's row (held
-- from a writer's first changed row to its commit: the rule of 0007 and 0008 holds, each
-- transaction that writes vms writes one VM's row), so the numbers are handed out in commit order;
-- the statement's trigger of 0007 then sets the version to the last number taken (a statement that
-- changed no row leaves it). A reader that reads vms_version and the rows in one snapshot sees
-- every row stamped with a version up to the one it read, and none stamped later. (The counter's
-- row is written once per statement, as before: writing it per row would make a statement of many
-- rows quadratic, each update walking the row's earlier versions of the same transaction.)
--
-- Tombstones are kept for the last 1,000,000 versions; `forgotten` is the newest version whose
-- tombstone may be gone: a reader that read before it reads the VMs whole again. A TRUNCATE
-- forgets everything up to its own version.
ALTER TABLE vms ADD COLUMN row_version bigint NOT NULL DEFAULT 0;
CREATE INDEX vms_row_version ON vms (row_version);

ALTER TABLE vms_version ADD COLUMN forgotten bigint NOT NULL DEFAULT 0;

CREATE TABLE vms_gone (
    row_version bigint PRIMARY KEY,
    name        text NOT NULL
);

CREATE SEQUENCE vms_row_version_seq MINVALUE 0 START 0;
DO $$ BEGIN PERFORM setval('vms_row_version_seq', version, true) FROM vms_version; END $$;

CREATE FUNCTION vms_row_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    keep CONSTANT bigint := 1000000;
BEGIN
    PERFORM 1 FROM vms_version FOR UPDATE;
    v := nextval('vms_row_version_seq');
    IF TG_OP = 'DELETE' THEN
        INSERT INTO vms_gone (row_version, name) VALUES (v, OLD.name);
        IF v % 1000 = 0 THEN  -- prune now and then, not on every delete
            UPDATE vms_version SET forgotten = greatest(forgotten, v - keep);
            DELETE FROM vms_gone WHERE row_version <= v - keep;
        END IF;
        RETURN OLD;
    END IF;
    NEW.row_version := v;
    RETURN NEW;
END
$$;

CREATE TRIGGER vms_row_version
    BEFORE INSERT OR UPDATE OR DELETE ON vms
    FOR EACH ROW EXECUTE FUNCTION vms_row_version();

CREATE OR REPLACE FUNCTION vms_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        v := nextval('vms_row_version_seq');
        UPDATE vms_version SET version = v, forgotten = v;
        DELETE FROM vms_gone;
    ELSE
        -- Never backwards: a statement that changed no row may have read the sequence while
        -- another writer was taking numbers; it then waits for that writer's lock here and
        -- finds the version already past what it read.
        UPDATE vms_version SET version = (SELECT last_value FROM vms_row_version_seq)
        WHERE version < (SELECT last_value FROM vms_row_version_seq);
    END IF;
    RETURN NULL;
END
$$;
