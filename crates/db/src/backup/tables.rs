//! The tables a backup holds: each one's columns and what they hold, in restore order.

/// What a column holds: every column of the schema is one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Text,
}

/// A table of the store, its columns, and whether `id` is auto-incremented.
#[derive(Debug)]
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) columns: &'static [(&'static str, Kind)],
    pub(super) serial_id: bool,
}

use Kind::{Int, Text};

/// Every table of the store but `schema_migrations`, parents before the tables that refer to
/// them (a restore inserts in this order and empties in the reverse one). A test compares it
/// with the migrated schema on both engines, so a migration that adds a table or a column and
/// forgets it here fails there.
pub(super) const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("id", Int),
            ("username", Text),
            ("password_hash", Text),
            ("disabled", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("last_login_at", Int),
            ("locked_until", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "roles",
        columns: &[("id", Int), ("name", Text), ("created_at", Int)],
        serial_id: true,
    },
    Table {
        name: "permissions",
        columns: &[("id", Int), ("name", Text)],
        serial_id: true,
    },
    Table {
        name: "user_roles",
        columns: &[("user_id", Int), ("role_id", Int)],
        serial_id: false,
    },
    Table {
        name: "role_permissions",
        columns: &[("role_id", Int), ("permission_id", Int)],
        serial_id: false,
    },
    Table {
        name: "sessions",
        columns: &[
            ("id", Text),
            ("user_id", Int),
            ("access_hash", Text),
            ("access_expires_at", Int),
            ("refresh_hash", Text),
            ("refresh_expires_at", Int),
            ("expires_at", Int),
            ("created_at", Int),
            ("client_ip", Text),
        ],
        serial_id: false,
    },
    Table {
        name: "spent_refresh_tokens",
        columns: &[
            ("token_hash", Text),
            ("session_id", Text),
            ("expires_at", Int),
        ],
        serial_id: false,
    },
    Table {
        name: "audit_log",
        columns: &[
            ("id", Int),
            ("at", Int),
            ("event", Text),
            ("username", Text),
            ("client_ip", Text),
            ("detail", Text),
            ("task_id", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "notifications",
        columns: &[
            ("id", Int),
            ("receiver", Text),
            ("channel", Text),
            ("url", Text),
            ("lane", Text),
            ("group_key", Text),
            ("status", Text),
            ("fingerprints", Text),
            ("payload", Text),
            ("state", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_error", Text),
            ("last_status", Int),
            ("last_latency_ms", Int),
            ("created_at", Int),
            ("delivered_at", Int),
            ("finished_at", Int),
            ("claimed_by", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "alert_history",
        columns: &[
            ("id", Int),
            ("fingerprint", Text),
            ("alertname", Text),
            ("target", Text),
            ("labels", Text),
            ("annotations", Text),
            ("severity", Text),
            ("peak_severity", Text),
            ("peak_rank", Int),
            ("fired_at", Int),
            ("resolved_at", Int),
            ("acked_at", Int),
            ("acked_by", Text),
            ("updated_at", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "alert_notified",
        columns: &[
            ("fingerprint", Text),
            ("receiver", Text),
            ("severity", Text),
            ("updated_at", Int),
        ],
        serial_id: false,
    },
    Table {
        name: "silences",
        columns: &[
            ("id", Int),
            ("matchers", Text),
            ("ends_at", Int),
            ("comment", Text),
            ("created_at", Int),
            ("expired_at", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "backups",
        columns: &[
            ("id", Int),
            ("finished_at", Int),
            ("destination", Text),
            ("bytes", Int),
            ("rows_copied", Int),
            ("sha256", Text),
        ],
        serial_id: true,
    },
];

/// The tables a backup holds, in restore order, for tests and tools.
pub fn backup_tables() -> Vec<&'static str> {
    TABLES.iter().map(|table| table.name).collect()
}

/// The columns of `table` a backup holds.
pub fn backup_columns(table: &str) -> Option<Vec<&'static str>> {
    TABLES
        .iter()
        .find(|t| t.name == table)
        .map(|t| t.columns.iter().map(|(name, _)| *name).collect())
}
