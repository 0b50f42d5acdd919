-- forgetd schema, version 4: each provider's politeness gate, as the executor last saw it.
--
-- The gate itself lives in memory beside the provider (src/providers/gate.rs); this copy is what
-- `forgetd status` (another process) shows: running, throttled or paused, the rate it paces at
-- and whether that rate was learned from the provider's throttling, the concurrency it allows.
-- `next_probe_ms`, unused until now, holds the next probe of a paused provider. Only forgetd
-- writes these columns; feeders have no reason to read them.

ALTER TABLE provider_state ADD COLUMN gate_state TEXT
    CONSTRAINT provider_state_gate_state_must_be_running_throttled_or_paused
    CHECK (gate_state IS NULL OR gate_state IN ('running', 'throttled', 'paused'));
ALTER TABLE provider_state ADD COLUMN rate_per_s REAL;
ALTER TABLE provider_state ADD COLUMN rate_learned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE provider_state ADD COLUMN concurrency INTEGER;
ALTER TABLE provider_state ADD COLUMN max_concurrency INTEGER;
ALTER TABLE provider_state ADD COLUMN resume_at_ms INTEGER;
ALTER TABLE provider_state ADD COLUMN throttles INTEGER NOT NULL DEFAULT 0;
ALTER TABLE provider_state ADD COLUMN gate_updated_ms INTEGER;
