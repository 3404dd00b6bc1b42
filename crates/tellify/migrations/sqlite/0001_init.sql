-- Tellify's schema. Times are epoch milliseconds; JSON documents are TEXT.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    email         TEXT,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    timezone      TEXT NOT NULL DEFAULT 'UTC',
    password_hash TEXT,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name       TEXT NOT NULL DEFAULT '',
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- Every accepted event, in arrival order. The engine's checkpoint is a seq in here.
CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    source   TEXT NOT NULL,
    time     INTEGER NOT NULL,
    received INTEGER NOT NULL,
    hops     INTEGER NOT NULL DEFAULT 0,
    data     TEXT NOT NULL
);
CREATE INDEX events_received ON events(received);

-- One row per source: who owns it and its latest event (the topic data).
CREATE TABLE sources (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    visibility TEXT NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'public')),
    last_event TEXT,
    last_time  INTEGER,
    events     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE rules (
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    doc        TEXT NOT NULL,
    origin     TEXT NOT NULL DEFAULT 'api',
    error      TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);

-- What a rule remembers per key across restarts: for-timers, windows, heartbeats, script state.
CREATE TABLE rule_state (
    owner TEXT NOT NULL,
    rule  TEXT NOT NULL,
    key   TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (owner, rule, key)
);

CREATE TABLE alerts (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    rule          TEXT NOT NULL,
    key           TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'firing', 'resolved')),
    severity      TEXT NOT NULL,
    summary       TEXT NOT NULL,
    body          TEXT NOT NULL DEFAULT '',
    value         REAL,
    labels        TEXT NOT NULL DEFAULT '{}',
    links         TEXT NOT NULL DEFAULT '{}',
    source        TEXT NOT NULL DEFAULT '',
    run           TEXT,
    first_seen    INTEGER NOT NULL,
    fired_at      INTEGER,
    last_seen     INTEGER NOT NULL,
    resolved_at   INTEGER,
    resolve_reason TEXT,
    count         INTEGER NOT NULL DEFAULT 1,
    acked_by      TEXT,
    acked_at      INTEGER
);
-- At most one open alert per (owner, rule, key).
CREATE UNIQUE INDEX alerts_open ON alerts(owner, rule, key) WHERE status != 'resolved';
CREATE INDEX alerts_owner ON alerts(owner, id);

CREATE TABLE alert_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    owner    TEXT NOT NULL,
    rule     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    status   TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX alert_history_alert ON alert_history(alert_id);
CREATE INDEX alert_history_at ON alert_history(at);

-- The engine's progress: every event with seq <= checkpoint has been evaluated and committed.
CREATE TABLE engine (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checkpoint INTEGER NOT NULL
);
INSERT INTO engine (id, checkpoint) VALUES (1, 0);

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    detail TEXT
);
