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
