-- v3: the change journal, API tokens, shared settings, per-boot device tokens, request creators
-- (see schema-v3.sql).
CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind VARCHAR(32) NOT NULL,
    device_id INTEGER,
    request_id INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX changes_ts ON changes (ts);
ALTER TABLE devices ADD COLUMN boot_token CHAR(64);
ALTER TABLE requests ADD COLUMN created_by VARCHAR(64);
ALTER TABLE imaging_servers ADD COLUMN last_seen TEXT;
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name VARCHAR(64) NOT NULL UNIQUE,
    role VARCHAR(16) NOT NULL,
    hash CHAR(64) NOT NULL UNIQUE,
    created TEXT NOT NULL,
    revoked TEXT
);

CREATE TABLE settings (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

-- v3: leases: work any server may do but only one at a time (the inventory sync) is done by the
-- holder of its row, taken with one guarded UPDATE and held until `expires` (UTC).
CREATE TABLE leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    expires TEXT NOT NULL
);
