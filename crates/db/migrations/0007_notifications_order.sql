-- The outbox's claim (sekisho-monitor, outbox.rs) walks the pending rows in id order and stops at
-- its limit; without this index SQLite took the due-time index, gathered every pending row and
-- sorted them, so each claim cost in proportion to the backlog (2.3 ms with 5,000 pending, the
-- backlog of a receiver down for a while; 0.03 ms with this index, whatever the backlog).
CREATE INDEX notifications_pending_order ON notifications (state, id);
