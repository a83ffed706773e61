-- vmctl schema 0006: moving a VM whose disks are in shared storage (RBD) to another node.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.
--
-- While `vmctl move` works, the row also names the node the VM goes to and the address it gets
-- there: both are taken under the claim lock when the move begins, so no create takes that room
-- or that address meanwhile. The move either finishes (node and address become these) or is
-- undone (these go back to NULL); the VM's row stays on its node until the very end.
ALTER TABLE vms ADD COLUMN move_node text NULL;
ALTER TABLE vms ADD COLUMN move_ip_pool text NULL;
ALTER TABLE vms ADD COLUMN move_ip inet NULL;
ALTER TABLE vms ADD CONSTRAINT vms_move_ip_check
    CHECK ((move_ip_pool IS NULL) = (move_ip IS NULL) AND (move_ip IS NULL OR move_node IS NOT NULL));
CREATE UNIQUE INDEX vms_pool_move_ip_key ON vms (move_ip_pool, move_ip) WHERE move_ip IS NOT NULL;

-- A move logs each of its steps as an event of result 'step' (between 'started' and ok/failed).
ALTER TABLE events DROP CONSTRAINT events_result_check;
ALTER TABLE events ADD CONSTRAINT events_result_check
    CHECK (result IN ('ok', 'failed', 'started', 'step'));
