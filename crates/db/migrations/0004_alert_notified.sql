-- What each receiver was last told about an alert that it believes firing (sekisho-monitor):
-- one row per alert fingerprint and receiver, written once the `firing` notification is in the
-- outbox, removed once the `resolved` one is. A restarted gateway reads it back with the open
-- episodes of `alert_history`, so that an alert still firing is not announced again and one
-- that cleared while the gateway was down still gets its `resolved`. Times are Unix
-- milliseconds.
CREATE TABLE alert_notified (
    fingerprint TEXT NOT NULL,
    receiver TEXT NOT NULL,
    severity TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (fingerprint, receiver)
);
