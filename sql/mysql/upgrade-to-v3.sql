-- v3: the change journal (see schema-v3.sql).
CREATE TABLE changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    ts DATETIME NOT NULL,
    kind VARCHAR(32) NOT NULL,
    device_id INTEGER NULL,
    request_id BIGINT NULL,
    data MEDIUMTEXT NOT NULL,
    KEY changes_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
