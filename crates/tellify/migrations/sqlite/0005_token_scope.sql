-- What a token may do: `api` (everything its user may) or `metrics` (only read /metrics, for
-- a Prometheus scraper). Tokens made before scopes existed keep full access.
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'api' CHECK (scope IN ('api', 'metrics'));
