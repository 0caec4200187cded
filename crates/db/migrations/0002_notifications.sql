-- The notification outbox (sekisho-monitor): every notification is a row before anything is
-- sent. `lane` is receiver, channel and group key: a lane's rows are delivered in id order, so a
-- group's `resolved` never overtakes its `firing`. States: pending (waiting, or claimed until
-- `next_attempt_at` by a worker that may have died), delivered, dead (given up). Times are Unix
-- milliseconds.
CREATE TABLE notifications (
    id {id},
    receiver TEXT NOT NULL,
    channel TEXT NOT NULL,
    url TEXT NOT NULL,
    lane TEXT NOT NULL,
    group_key TEXT NOT NULL,
    status TEXT NOT NULL,
    fingerprints TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    last_status BIGINT,
    last_latency_ms BIGINT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    finished_at BIGINT
);

CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
CREATE INDEX notifications_lane ON notifications (lane, state, id);
CREATE INDEX notifications_finished ON notifications (finished_at);
