-- The auth work a request need not wait for (audit rows, last logins, lockouts) goes through the
-- durable task queue (the `notifications` table, channel `task`; sekisho-monitor's outbox) and is
-- applied by its worker at least once. `task_id` is the task an audit row came from: unique, so
-- that a task applied twice (its worker killed between the write and the task's record) makes one
-- row; NULL for rows written without the queue.
ALTER TABLE audit_log ADD COLUMN task_id BIGINT;
CREATE UNIQUE INDEX audit_log_task ON audit_log (task_id);
