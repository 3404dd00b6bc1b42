-- Owners the engine has deferred (their share of engine time ran out): every event up to
-- `position` has been evaluated by all of the owner's rules, and of the event `partial_seq`
-- (when set) the rules named in `partial_rules` (a JSON array). Events after the engine's
-- checkpoint are evaluated for nobody yet; between `position` and the checkpoint they are
-- evaluated for everyone but these owners. A row goes once its owner has caught up.
CREATE TABLE engine_owner_positions (
    owner         TEXT PRIMARY KEY,
    position      INTEGER NOT NULL,
    partial_seq   INTEGER,
    partial_rules TEXT
);
