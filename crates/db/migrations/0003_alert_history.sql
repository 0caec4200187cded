-- Alert history (sekisho-monitor): one row per episode of an alert, from the evaluation that
-- fired it to the one that resolved it. `severity` is the latest, `peak_severity` the highest
-- it reached (`peak_rank` orders them: info 0 … emergency 3). `labels` and `annotations` are
-- JSON objects. An open episode has no `resolved_at`; `acked_by` is who acknowledged it through
-- the admin API. Times are Unix milliseconds. Resolved rows are removed after the retention.
CREATE TABLE alert_history (
    id {id},
    fingerprint TEXT NOT NULL,
    alertname TEXT NOT NULL,
    target TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    severity TEXT NOT NULL,
    peak_severity TEXT NOT NULL,
    peak_rank BIGINT NOT NULL,
    fired_at BIGINT NOT NULL,
    resolved_at BIGINT,
    acked_at BIGINT,
    acked_by TEXT,
    updated_at BIGINT NOT NULL
);

CREATE INDEX alert_history_open ON alert_history (fingerprint, resolved_at);
CREATE INDEX alert_history_fired ON alert_history (fired_at);
CREATE INDEX alert_history_resolved ON alert_history (resolved_at);
