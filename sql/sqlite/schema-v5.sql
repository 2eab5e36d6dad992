-- MozPool schema, version 3, SQLite.  Times are UTC text 'YYYY-MM-DD HH:MM:SS'; state_timeout
-- carries milliseconds ('YYYY-MM-DD HH:MM:SS.mmm') so scaled timeouts keep their precision.
CREATE TABLE schema_version (version INTEGER NOT NULL);

CREATE TABLE imaging_servers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fqdn VARCHAR(255) NOT NULL UNIQUE,
    last_seen TEXT
);

CREATE TABLE pxe_configs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name VARCHAR(32) NOT NULL UNIQUE,
    description TEXT NOT NULL,
    contents TEXT NOT NULL,
    active INTEGER NOT NULL
);

CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name VARCHAR(32) NOT NULL UNIQUE,
    boot_config_keys TEXT NOT NULL,
    can_reuse INTEGER NOT NULL DEFAULT 0,
    hidden INTEGER NOT NULL DEFAULT 0,
    has_sut_agent INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE hardware_types (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type VARCHAR(32) NOT NULL,
    model VARCHAR(32) NOT NULL,
    UNIQUE (type, model)
);

CREATE TABLE image_pxe_configs (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
    hardware_type_id INTEGER NOT NULL REFERENCES hardware_types(id) ON DELETE RESTRICT,
    pxe_config_id INTEGER REFERENCES pxe_configs(id) ON DELETE RESTRICT,
    PRIMARY KEY (image_id, hardware_type_id)
);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name VARCHAR(32) NOT NULL UNIQUE,
    fqdn VARCHAR(256) NOT NULL,
    inventory_id INTEGER NOT NULL,
    state VARCHAR(32) NOT NULL,
    state_counters TEXT NOT NULL,
    state_timeout TEXT,
    mac_address VARCHAR(12) NOT NULL,
    imaging_server_id INTEGER NOT NULL REFERENCES imaging_servers(id),
    relay_info TEXT,
    image_id INTEGER REFERENCES images(id),
    boot_config TEXT,
    next_image_id INTEGER REFERENCES images(id),
    next_boot_config TEXT,
    comments TEXT,
    environment VARCHAR(32) NOT NULL DEFAULT 'none',
    hardware_type_id INTEGER REFERENCES hardware_types(id),
    boot_token CHAR(64)
);
CREATE INDEX devices_state_timeout ON devices (state_timeout);
CREATE INDEX devices_imaging_server ON devices (imaging_server_id);

CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    imaging_server_id INTEGER NOT NULL REFERENCES imaging_servers(id),
    requested_device VARCHAR(32) NOT NULL,
    assignee VARCHAR(256) NOT NULL,
    expires TEXT NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    boot_config TEXT,
    state VARCHAR(32) NOT NULL,
    state_counters TEXT NOT NULL,
    state_timeout TEXT,
    environment VARCHAR(32) NOT NULL DEFAULT 'any',
    created_by VARCHAR(64)
);
CREATE INDEX requests_state_timeout ON requests (state_timeout);
CREATE INDEX requests_expires ON requests (expires);

CREATE TABLE device_requests (
    request_id INTEGER NOT NULL UNIQUE REFERENCES requests(id),
    device_id INTEGER NOT NULL UNIQUE REFERENCES devices(id),
    imaging_result VARCHAR(32)
);

CREATE TABLE relay_boards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name VARCHAR(32) NOT NULL UNIQUE,
    fqdn VARCHAR(255) NOT NULL UNIQUE,
    imaging_server_id INTEGER NOT NULL REFERENCES imaging_servers(id),
    state VARCHAR(32) NOT NULL,
    state_counters TEXT NOT NULL,
    state_timeout TEXT
);
CREATE INDEX relay_boards_imaging_server ON relay_boards (imaging_server_id);

CREATE TABLE device_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    ts TEXT NOT NULL,
    source VARCHAR(32) NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX device_logs_device ON device_logs (device_id, ts);
CREATE INDEX device_logs_ts ON device_logs (ts);

CREATE TABLE request_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id INTEGER NOT NULL,
    ts TEXT NOT NULL,
    source VARCHAR(32) NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX request_logs_request ON request_logs (request_id, ts);
CREATE INDEX request_logs_ts ON request_logs (ts);

-- v3: the change journal behind /api/events and the in-memory pool view: one row per state
-- change, log line, assignment or operator edit, written in the transaction that made it.
CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind VARCHAR(32) NOT NULL,
    device_id INTEGER,
    request_id INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX changes_ts ON changes (ts);

-- v3: API tokens (only their SHA-256 is stored) and settings shared by every server (the
-- cluster secret that signs inter-server calls).
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

-- v4 (issue 14, scheduling): a request's priority, how long it may wait for a device, when it
-- was queued and when it got its device; whether a device was imaged and never handed out since
-- (pristine: it may be handed out without re-imaging); imaging time per image and hardware type
-- (running mean, for the queue's ETA).
ALTER TABLE requests ADD COLUMN priority INTEGER NOT NULL DEFAULT 50;
ALTER TABLE requests ADD COLUMN queue_timeout INTEGER NOT NULL DEFAULT 600;
ALTER TABLE requests ADD COLUMN created TEXT;
ALTER TABLE requests ADD COLUMN assigned_at TEXT;
CREATE INDEX requests_state ON requests (state);
ALTER TABLE devices ADD COLUMN pristine INTEGER NOT NULL DEFAULT 0;
CREATE TABLE imaging_stats (
    image_id INTEGER NOT NULL REFERENCES images(id),
    hardware_type_id INTEGER NOT NULL REFERENCES hardware_types(id),
    samples INTEGER NOT NULL,
    mean_seconds REAL NOT NULL,
    PRIMARY KEY (image_id, hardware_type_id)
);

-- v4 (issue 15, health: state history, failure reasons, boot telemetry; one block).
-- state_history: one row per transition of a device or a request machine (`kind`): when (with
-- milliseconds), from and to (from NULL: created), the cause (an event name, 'timeout',
-- 'state_change', 'entry' when an entry action moved on, 'created'), the server that made it,
-- the device and the request involved, and a JSON reason (counter, count, limit, ...).
-- Purged with the logs.
CREATE TABLE state_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind VARCHAR(8) NOT NULL,
    device_id INTEGER,
    request_id INTEGER,
    from_state VARCHAR(32),
    to_state VARCHAR(32) NOT NULL,
    cause VARCHAR(64) NOT NULL,
    server VARCHAR(255) NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX state_history_device ON state_history (device_id, id);
CREATE INDEX state_history_request ON state_history (request_id, id);
CREATE INDEX state_history_ts ON state_history (ts);
-- devices.failure: why a device in a failed_*, locked_out or troubleshooting state is there
-- (JSON: state, since, reason, phase, attempts, evidence); NULL otherwise.
ALTER TABLE devices ADD COLUMN failure TEXT;
-- boots: one row per PXE boot of a device, with the times this daemon observed each milestone
-- (NULL: not seen).  Purged with the logs.
CREATE TABLE boots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    image VARCHAR(32),
    hardware_type VARCHAR(32),
    server VARCHAR(255) NOT NULL,
    started TEXT NOT NULL,
    power_on TEXT,
    pxe_fetched TEXT,
    init_started TEXT,
    stage_started TEXT,
    extracting TEXT,
    rebooting TEXT,
    sut_verified TEXT,
    sdcard_verified TEXT,
    ended TEXT,
    outcome VARCHAR(32)
);
CREATE INDEX boots_device ON boots (device_id, id);
CREATE INDEX boots_started ON boots (started);

-- v4 (issue 15, fault isolation by blast radius; one block): a power controller's health is its
-- relay_boards row (state 'ready' or 'suspect', state_counters {"probes": n}, state_timeout =
-- the next probe); since when it is in that state, and why.
ALTER TABLE relay_boards ADD COLUMN health_since TEXT;
ALTER TABLE relay_boards ADD COLUMN health_reason TEXT;

-- v5 (issue 17, allocation): the pristine devices holding an image, found by an index instead of a
-- scan of every ready device on each claim.
CREATE INDEX devices_pristine ON devices (pristine, image_id);
