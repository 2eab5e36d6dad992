-- v2: state deadlines with milliseconds, so timeouts scaled by time_scale keep their precision.
ALTER TABLE devices MODIFY state_timeout DATETIME(3) NULL;
ALTER TABLE requests MODIFY state_timeout DATETIME(3) NULL;
ALTER TABLE relay_boards MODIFY state_timeout DATETIME(3) NULL;
