-- v3: the change journal (see schema-v3.sql).
CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind VARCHAR(32) NOT NULL,
    device_id INTEGER,
    request_id INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX changes_ts ON changes (ts);
