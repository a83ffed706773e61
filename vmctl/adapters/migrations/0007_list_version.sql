-- vmctl schema 0007: a version of the vms table, for caching lists.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.
--
-- Every statement that changes vms (insert, update, delete, truncate) adds one to the version, in
-- its own transaction: a reader that reads the version and a list in one statement (one snapshot)
-- knows the list is still current for as long as the version has not moved. `vmctl serve` keeps
-- the JSON of GET /api/v1/vm per project and filter, and asks PostgreSQL only for the version
-- (~0.1 ms) until it moves; building the list of 10,000 VMs takes ~30 ms.
-- The counter's row is locked from a writer's first changing statement to its commit: writers of
-- vms queue there. That cannot deadlock while each transaction that writes vms writes one VM's
-- row only (every one in vmctl.adapters.store does: keep it so), since a writer then never
-- waits for another VM's row once it holds the counter.
CREATE TABLE vms_version (
    one     boolean PRIMARY KEY DEFAULT true CONSTRAINT vms_version_one_row CHECK (one),
    version bigint NOT NULL
);
INSERT INTO vms_version (one, version) VALUES (true, 0);

CREATE FUNCTION vms_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE vms_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER vms_version_bump
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON vms
    FOR EACH STATEMENT EXECUTE FUNCTION vms_version_bump();
