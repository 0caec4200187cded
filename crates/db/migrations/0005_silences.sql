-- Silences (sekisho-monitor): an operator's silence outlives a restart of the gateway. `matchers`
-- is a JSON list of {"name","value","is_equal"}; `ends_at`, `created_at` and `expired_at` (set
-- when it is ended early through the admin API) are Unix milliseconds. A restarted gateway puts
-- back every row not expired whose end is still ahead.
CREATE TABLE silences (
    id {id},
    matchers TEXT NOT NULL,
    ends_at BIGINT NOT NULL,
    comment TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expired_at BIGINT
);
