-- v3: the change journal, API tokens, shared settings, per-boot device tokens, request creators
-- (see schema-v3.sql).
-- Every statement may run again: two nodes of a Galera cluster upgrading at once can interrupt
-- each other's DDL, and the step is then simply run again.
CREATE TABLE IF NOT EXISTS changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    ts DATETIME NOT NULL,
    kind VARCHAR(32) NOT NULL,
    device_id INTEGER NULL,
    request_id BIGINT NULL,
    data MEDIUMTEXT NOT NULL,
    KEY changes_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS boot_token CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS created_by VARCHAR(64) NULL;
ALTER TABLE imaging_servers ADD COLUMN IF NOT EXISTS last_seen DATETIME(3) NULL AFTER fqdn;
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    role VARCHAR(16) NOT NULL,
    hash CHAR(64) NOT NULL,
    created DATETIME NOT NULL,
    revoked DATETIME NULL,
    UNIQUE KEY tokens_name (name),
    UNIQUE KEY tokens_hash (hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS settings (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- v3: leases: work any server may do but only one at a time (the inventory sync) is done by the
-- holder of its row, taken with one guarded UPDATE and held until `expires` (UTC).
CREATE TABLE IF NOT EXISTS leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    expires DATETIME NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
