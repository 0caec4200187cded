-- Backups taken with `sekisho backup` (sekisho-db, backup.rs): one row per backup that reached
-- its destination, written after the file was complete. `backup_age` (sekisho-monitor) is the
-- time since the newest. `destination` is the file's path as given, `rows_copied` every row of
-- every table, `sha256` the checksum its trailer carries. Times are Unix milliseconds.
CREATE TABLE backups (
    id {id},
    finished_at BIGINT NOT NULL,
    destination TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    rows_copied BIGINT NOT NULL,
    sha256 TEXT NOT NULL
);
