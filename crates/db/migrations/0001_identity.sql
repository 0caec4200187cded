-- Users, roles, permissions, sessions (the embedded session store) and the audit log.
-- Times are Unix milliseconds (BIGINT) and flags 0/1, so that SQLite and PostgreSQL read the
-- same types; `{id}` is the dialect's auto-incremented primary key.
CREATE TABLE users (
    id {id},
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_login_at BIGINT,
    locked_until BIGINT
);

CREATE TABLE roles (
    id {id},
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE permissions (
    id {id},
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE user_roles (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id BIGINT NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, role_id)
);

CREATE TABLE role_permissions (
    role_id BIGINT NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    permission_id BIGINT NOT NULL REFERENCES permissions (id) ON DELETE CASCADE,
    PRIMARY KEY (role_id, permission_id)
);

-- One row per session (a family of tokens): the current access and refresh tokens, hashed.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    access_hash TEXT NOT NULL UNIQUE,
    access_expires_at BIGINT NOT NULL,
    refresh_hash TEXT NOT NULL UNIQUE,
    refresh_expires_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    client_ip TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Refresh tokens already rotated away: presenting one again revokes its session.
CREATE TABLE spent_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id {id},
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    username TEXT,
    client_ip TEXT,
    detail TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
