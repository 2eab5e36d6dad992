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
