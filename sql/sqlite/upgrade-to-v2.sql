-- v2: state deadlines with milliseconds.  SQLite stores them as text already: nothing to alter.
SELECT 1;
