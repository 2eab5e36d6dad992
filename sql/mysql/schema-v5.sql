-- MozPool schema, version 3, MySQL/MariaDB (InnoDB, utf8mb4, case-sensitive names).
-- state_timeout is DATETIME(3): scaled timeouts keep millisecond precision.
CREATE TABLE schema_version (version INTEGER NOT NULL) ENGINE=InnoDB;

CREATE TABLE imaging_servers (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    fqdn VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_seen DATETIME(3) NULL,
    UNIQUE KEY imaging_servers_fqdn (fqdn)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE pxe_configs (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(32) NOT NULL,
    description TEXT NOT NULL,
    contents TEXT NOT NULL,
    active INTEGER NOT NULL,
    UNIQUE KEY pxe_configs_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE images (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(32) NOT NULL,
    boot_config_keys TEXT NOT NULL,
    can_reuse INTEGER NOT NULL DEFAULT 0,
    hidden INTEGER NOT NULL DEFAULT 0,
    has_sut_agent INTEGER NOT NULL DEFAULT 0,
    UNIQUE KEY images_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE hardware_types (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    type VARCHAR(32) NOT NULL,
    model VARCHAR(32) NOT NULL,
    UNIQUE KEY hardware_types_type_model (type, model)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE image_pxe_configs (
    image_id INTEGER NOT NULL,
    hardware_type_id INTEGER NOT NULL,
    pxe_config_id INTEGER NULL,
    PRIMARY KEY (image_id, hardware_type_id),
    FOREIGN KEY (image_id) REFERENCES images (id) ON DELETE RESTRICT,
    FOREIGN KEY (hardware_type_id) REFERENCES hardware_types (id) ON DELETE RESTRICT,
    FOREIGN KEY (pxe_config_id) REFERENCES pxe_configs (id) ON DELETE RESTRICT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE devices (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(32) NOT NULL,
    fqdn VARCHAR(256) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    inventory_id INTEGER NOT NULL,
    state VARCHAR(32) NOT NULL,
    state_counters TEXT NOT NULL,
    state_timeout DATETIME(3) NULL,
    mac_address VARCHAR(12) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    imaging_server_id INTEGER NOT NULL,
    relay_info TEXT NULL,
    image_id INTEGER NULL,
    boot_config TEXT NULL,
    next_image_id INTEGER NULL,
    next_boot_config TEXT NULL,
    comments TEXT NULL,
    environment VARCHAR(32) NOT NULL DEFAULT 'none',
    hardware_type_id INTEGER NULL,
    boot_token CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    UNIQUE KEY devices_name (name),
    KEY devices_state_timeout (state_timeout),
    FOREIGN KEY (imaging_server_id) REFERENCES imaging_servers (id),
    FOREIGN KEY (image_id) REFERENCES images (id),
    FOREIGN KEY (next_image_id) REFERENCES images (id),
    FOREIGN KEY (hardware_type_id) REFERENCES hardware_types (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE requests (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    imaging_server_id INTEGER NOT NULL,
    requested_device VARCHAR(32) NOT NULL,
    assignee VARCHAR(256) NOT NULL,
    expires DATETIME NOT NULL,
    image_id INTEGER NOT NULL,
    boot_config TEXT NULL,
    state VARCHAR(32) NOT NULL,
    state_counters TEXT NOT NULL,
    state_timeout DATETIME(3) NULL,
    environment VARCHAR(32) NOT NULL DEFAULT 'any',
    created_by VARCHAR(64) NULL,
    KEY requests_state_timeout (state_timeout),
    KEY requests_expires (expires),
    FOREIGN KEY (imaging_server_id) REFERENCES imaging_servers (id),
    FOREIGN KEY (image_id) REFERENCES images (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_requests (
    request_id BIGINT NOT NULL,
    device_id INTEGER NOT NULL,
    imaging_result VARCHAR(32) NULL,
    UNIQUE KEY device_requests_request (request_id),
    UNIQUE KEY device_requests_device (device_id),
    FOREIGN KEY (request_id) REFERENCES requests (id),
    FOREIGN KEY (device_id) REFERENCES devices (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE relay_boards (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(32) NOT NULL,
    fqdn VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    imaging_server_id INTEGER NOT NULL,
    state VARCHAR(32) NOT NULL,
    state_counters TEXT NOT NULL,
    state_timeout DATETIME(3) NULL,
    UNIQUE KEY relay_boards_name (name),
    UNIQUE KEY relay_boards_fqdn (fqdn),
    KEY relay_boards_imaging_server (imaging_server_id),
    FOREIGN KEY (imaging_server_id) REFERENCES imaging_servers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_logs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id INTEGER NOT NULL,
    ts DATETIME NOT NULL,
    source VARCHAR(32) NOT NULL,
    message TEXT NOT NULL,
    KEY device_logs_device (device_id, ts),
    KEY device_logs_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE request_logs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id BIGINT NOT NULL,
    ts DATETIME NOT NULL,
    source VARCHAR(32) NOT NULL,
    message TEXT NOT NULL,
    KEY request_logs_request (request_id, ts),
    KEY request_logs_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- v3: the change journal behind /api/events and the in-memory pool view: one row per state
-- change, log line, assignment or operator edit, written in the transaction that made it.
CREATE TABLE changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    ts DATETIME NOT NULL,
    kind VARCHAR(32) NOT NULL,
    device_id INTEGER NULL,
    request_id BIGINT NULL,
    data MEDIUMTEXT NOT NULL,
    KEY changes_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- v3: API tokens (only their SHA-256 is stored) and settings shared by every server (the
-- cluster secret that signs inter-server calls).
CREATE TABLE tokens (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    role VARCHAR(16) NOT NULL,
    hash CHAR(64) NOT NULL,
    created DATETIME NOT NULL,
    revoked DATETIME NULL,
    UNIQUE KEY tokens_name (name),
    UNIQUE KEY tokens_hash (hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE settings (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- v3: leases: work any server may do but only one at a time (the inventory sync) is done by the
-- holder of its row, taken with one guarded UPDATE and held until `expires` (UTC).
CREATE TABLE leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    expires DATETIME NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- v4 (issue 14, scheduling): a request's priority, how long it may wait for a device, when it
-- was queued and when it got its device; whether a device was imaged and never handed out since
-- (pristine: it may be handed out without re-imaging); imaging time per image and hardware type
-- (running mean, for the queue's ETA).
ALTER TABLE requests ADD COLUMN IF NOT EXISTS priority INTEGER NOT NULL DEFAULT 50;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS queue_timeout INTEGER NOT NULL DEFAULT 600;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS created DATETIME(3) NULL;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS assigned_at DATETIME(3) NULL;
CREATE INDEX IF NOT EXISTS requests_state ON requests (state);
ALTER TABLE devices ADD COLUMN IF NOT EXISTS pristine TINYINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS imaging_stats (
    image_id INTEGER NOT NULL,
    hardware_type_id INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    mean_seconds DOUBLE NOT NULL,
    PRIMARY KEY (image_id, hardware_type_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- v4 (issue 15, health: state history, failure reasons, boot telemetry; one block).
-- state_history: one row per transition of a device or a request machine (`kind`): when (with
-- milliseconds), from and to (from NULL: created), the cause (an event name, 'timeout',
-- 'state_change', 'entry' when an entry action moved on, 'created'), the server that made it,
-- the device and the request involved, and a JSON reason (counter, count, limit, ...).
-- Purged with the logs.
CREATE TABLE IF NOT EXISTS state_history (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    ts DATETIME(3) NOT NULL,
    kind VARCHAR(8) NOT NULL,
    device_id INTEGER NULL,
    request_id BIGINT NULL,
    from_state VARCHAR(32) NULL,
    to_state VARCHAR(32) NOT NULL,
    cause VARCHAR(64) NOT NULL,
    server VARCHAR(255) NOT NULL,
    reason TEXT NOT NULL,
    KEY state_history_device (device_id, id),
    KEY state_history_request (request_id, id),
    KEY state_history_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- devices.failure: why a device in a failed_*, locked_out or troubleshooting state is there
-- (JSON: state, since, reason, phase, attempts, evidence); NULL otherwise.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS failure TEXT NULL;
-- boots: one row per PXE boot of a device, with the times this daemon observed each milestone
-- (NULL: not seen).  Purged with the logs.
CREATE TABLE IF NOT EXISTS boots (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id INTEGER NOT NULL,
    image VARCHAR(32) NULL,
    hardware_type VARCHAR(32) NULL,
    server VARCHAR(255) NOT NULL,
    started DATETIME(3) NOT NULL,
    power_on DATETIME(3) NULL,
    pxe_fetched DATETIME(3) NULL,
    init_started DATETIME(3) NULL,
    stage_started DATETIME(3) NULL,
    extracting DATETIME(3) NULL,
    rebooting DATETIME(3) NULL,
    sut_verified DATETIME(3) NULL,
    sdcard_verified DATETIME(3) NULL,
    ended DATETIME(3) NULL,
    outcome VARCHAR(32) NULL,
    KEY boots_device (device_id, id),
    KEY boots_started (started)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- v4 (issue 15, fault isolation by blast radius; one block): a power controller's health is its
-- relay_boards row (state 'ready' or 'suspect', state_counters {"probes": n}, state_timeout =
-- the next probe); since when it is in that state, and why.
ALTER TABLE relay_boards ADD COLUMN IF NOT EXISTS health_since DATETIME NULL;
ALTER TABLE relay_boards ADD COLUMN IF NOT EXISTS health_reason TEXT NULL;

-- v5 (issue 17, allocation): the pristine devices holding an image, found by an index instead of a
-- scan of every ready device on each claim.
CREATE INDEX IF NOT EXISTS devices_pristine ON devices (pristine, image_id);
