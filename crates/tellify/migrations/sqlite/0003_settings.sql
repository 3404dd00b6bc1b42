-- Server-wide settings set over the API (the SMTP server), as JSON with secrets sealed.
CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
