-- vmctl schema 0012: claim ids, so that a claim whose COMMIT was lost is found, never made twice.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.
--
-- Each claim carries an id of its own (a UUID made by the claiming process, the same for every
-- attempt of one claim). When the connection is lost after COMMIT was sent (a PostgreSQL
-- failover), whether the claim was committed is unknown: the claimant looks for its id on the
-- new primary. Found: the claim was made, it is a success (not "the name is taken"). Not found:
-- it was not, and claiming again cannot make it twice. NULL for rows claimed before 0012.
ALTER TABLE vms ADD COLUMN claim_id uuid;
CREATE UNIQUE INDEX vms_claim_id ON vms (claim_id);
