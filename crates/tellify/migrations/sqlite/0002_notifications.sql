-- Notifications: channels, subscriptions, silences, and the delivery outbox.

CREATE TABLE channels (
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    -- The kind's settings as JSON; secret fields are sealed with the server key.
    settings   TEXT NOT NULL,
    -- Made by an admin for everyone's subscriptions.
    shared     INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);

CREATE TABLE subscriptions (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    spec       TEXT NOT NULL,
    -- `api`, or `rule:NAME` for the subscriptions a rule's `notify:` list stands for.
    origin     TEXT NOT NULL DEFAULT 'api',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX subscriptions_owner ON subscriptions(owner);

CREATE TABLE silences (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    matchers   TEXT NOT NULL,
    starts_at  INTEGER NOT NULL,
    ends_at    INTEGER NOT NULL,
    comment    TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

-- The outbox: one row per notification, written in the transaction of the alert change
-- that caused it, and sent at least once by the delivery worker.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    alert_id        TEXT NOT NULL,
    owner           TEXT NOT NULL,
    subscription_id TEXT,
    channel_owner   TEXT NOT NULL,
    channel         TEXT NOT NULL,
    channel_kind    TEXT NOT NULL,
    trigger         TEXT NOT NULL,
    format          TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'held', 'sending', 'sent', 'dead', 'silenced')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- Deliveries held for one digest share this key and are sent as one message.
    digest          TEXT,
    changed_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    last_error      TEXT,
    -- The alert as it was at the change.
    snapshot        TEXT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX deliveries_alert ON deliveries(alert_id);
CREATE INDEX deliveries_digest ON deliveries(digest) WHERE digest IS NOT NULL;
