-- Who holds a claimed outbox row (sekisho-monitor, outbox.rs), on PostgreSQL: the backend pid of
-- the worker's claiming connection (a connection of its own, for the worker's life). A row whose
-- claimer's backend is gone — the gateway was killed mid-attempt — may be claimed again at once
-- instead of after its lease. NULL when not claimed, and always on SQLite (one gateway per file:
-- it releases every claim when it starts).
ALTER TABLE notifications ADD COLUMN claimed_by BIGINT;
