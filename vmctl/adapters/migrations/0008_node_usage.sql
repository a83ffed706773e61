-- vmctl schema 0008: what the VMs of each node take, kept up to date by a trigger on vms.
-- Applied by vmctl.db.upgrade (yoyo-migrations), in one transaction.
--
-- A claim (and a resize, and the start of a move) holds the claim lock while it reads every
-- node's usage, places the VM and records it. Summing the vms table for that read took 3.3 ms at
-- 10,000 VMs and grew with the table, so claims could not go faster than ~150 a second, however
-- many creators ran. Now the sums are kept per node and group, by the same statements that change
-- vms: the read is one short row per node and group, whatever the number of VMs.
--
-- A VM counts on its node (cpu, ram_mb, disk_gb + root_gb) and, while it is being moved, on its
-- move_node too (cpu, ram_mb; its disks are counted there once they are) -- exactly what the sums
-- of schema 0001-0007 counted. group_name '' stands for "no group".
--
-- Locking: the trigger first locks the row of vms_version (schema 0007), which every writer of vms
-- takes anyway, then the usage rows, in node order. So writers of vms reach usage rows one at a
-- time, in the order they reach vms_version: this adds no deadlock (the rule of schema 0007 holds:
-- each transaction that writes vms writes one VM's row).
CREATE TABLE node_usage (
    node        text NOT NULL,
    group_name  text NOT NULL,
    cpu         bigint NOT NULL,
    ram_mb      bigint NOT NULL,
    disk_gb     bigint NOT NULL,
    vms         bigint NOT NULL,
    PRIMARY KEY (node, group_name)
);

INSERT INTO node_usage (node, group_name, cpu, ram_mb, disk_gb, vms)
SELECT node, group_name, sum(cpu), sum(ram_mb), sum(disk_gb), count(*)
FROM (SELECT node, coalesce(group_name, '') AS group_name, cpu, ram_mb, disk_gb + root_gb AS disk_gb
      FROM vms
      UNION ALL
      SELECT move_node, coalesce(group_name, ''), cpu, ram_mb, 0 FROM vms WHERE move_node IS NOT NULL
     ) AS v
GROUP BY node, group_name;

CREATE FUNCTION node_usage_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM vms_version FOR UPDATE;
    WITH delta (node, group_name, cpu, ram_mb, disk_gb, vms) AS (
        SELECT OLD.node, coalesce(OLD.group_name, ''), -OLD.cpu, -OLD.ram_mb,
               -(OLD.disk_gb + OLD.root_gb), -1
        WHERE TG_OP IN ('UPDATE', 'DELETE')
        UNION ALL
        SELECT OLD.move_node, coalesce(OLD.group_name, ''), -OLD.cpu, -OLD.ram_mb, 0, -1
        WHERE TG_OP IN ('UPDATE', 'DELETE') AND OLD.move_node IS NOT NULL
        UNION ALL
        SELECT NEW.node, coalesce(NEW.group_name, ''), NEW.cpu, NEW.ram_mb,
               NEW.disk_gb + NEW.root_gb, 1
        WHERE TG_OP IN ('UPDATE', 'INSERT')
        UNION ALL
        SELECT NEW.move_node, coalesce(NEW.group_name, ''), NEW.cpu, NEW.ram_mb, 0, 1
        WHERE TG_OP IN ('UPDATE', 'INSERT') AND NEW.move_node IS NOT NULL
    ), summed AS (
        SELECT node, group_name, sum(cpu) AS cpu, sum(ram_mb) AS ram_mb, sum(disk_gb) AS disk_gb,
               sum(vms) AS vms
        FROM delta GROUP BY node, group_name
        HAVING sum(cpu) <> 0 OR sum(ram_mb) <> 0 OR sum(disk_gb) <> 0 OR sum(vms) <> 0
    )
    INSERT INTO node_usage AS u (node, group_name, cpu, ram_mb, disk_gb, vms)
    SELECT node, group_name, cpu, ram_mb, disk_gb, vms FROM summed ORDER BY node, group_name
    ON CONFLICT (node, group_name) DO UPDATE
        SET cpu = u.cpu + EXCLUDED.cpu, ram_mb = u.ram_mb + EXCLUDED.ram_mb,
            disk_gb = u.disk_gb + EXCLUDED.disk_gb, vms = u.vms + EXCLUDED.vms;
    RETURN NULL;
END
$$;

CREATE TRIGGER node_usage_follow
    AFTER INSERT OR DELETE OR UPDATE OF node, cpu, ram_mb, disk_gb, root_gb, group_name, move_node
    ON vms FOR EACH ROW EXECUTE FUNCTION node_usage_follow();

CREATE FUNCTION node_usage_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM node_usage;
    RETURN NULL;
END
$$;

CREATE TRIGGER node_usage_clear AFTER TRUNCATE ON vms
    FOR EACH STATEMENT EXECUTE FUNCTION node_usage_clear();
