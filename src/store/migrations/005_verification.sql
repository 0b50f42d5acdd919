-- forgetd schema, version 5: read-after-delete verification (src/verify.rs).
--
-- A provider's "deleted" is a claim. Some time after it (`[verify] after`), forgetd reads each
-- deleted chat back through the provider's read calls and records what it saw:
-- * `verify_state` NULL on a deleted item: not read back yet (due once `finished_at` is `after`
--   old and `verify_next_ms` has passed); 'verified_absent': read back absent (`verified_at`);
--   'unverified': the reads could not decide `[verify] max_attempts` times (`verify_error` says
--   why; never counted as verified); 'not_checked': deleted before this version, never read back.
-- * A chat read back *present* after its deletion was confirmed has `reappeared`: it returns to
--   pending (deleted -> pending, a new transition) to be deleted again, `reappeared` counting the
--   times; past `[verify] max_reappearances` it goes dead instead (deleted -> dead) with the reason.
-- * `erasure_requests.verified_at`: when every deleted chat of a complete request was read back
--   absent. It is not a state: feeders keep reading `complete`.

ALTER TABLE work_items ADD COLUMN verify_state TEXT
    CONSTRAINT work_items_verify_state_must_be_known
    CHECK (verify_state IS NULL OR verify_state IN ('verified_absent', 'unverified', 'not_checked'));
ALTER TABLE work_items ADD COLUMN verified_at INTEGER;
ALTER TABLE work_items ADD COLUMN verify_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE work_items ADD COLUMN verify_next_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE work_items ADD COLUMN verify_error TEXT;
ALTER TABLE work_items ADD COLUMN reappeared INTEGER NOT NULL DEFAULT 0;

-- Deleted before verification existed: say so rather than read years of deletions back at once.
UPDATE work_items SET verify_state = 'not_checked' WHERE state = 'deleted';

-- What the verifier looks for: deleted, not read back yet, oldest confirmation first.
CREATE INDEX work_items_to_verify ON work_items (provider, finished_at, id)
    WHERE state = 'deleted' AND verify_state IS NULL;

DROP TRIGGER work_items_state_transition_must_be_legal;
CREATE TRIGGER work_items_state_transition_must_be_legal
BEFORE UPDATE OF state ON work_items
WHEN OLD.state <> NEW.state AND NOT (
       (OLD.state = 'pending' AND (NEW.state = 'in_flight' OR NEW.state = 'held' OR NEW.state = 'dead'))
    OR (OLD.state = 'in_flight' AND (NEW.state = 'pending' OR NEW.state = 'deleted' OR NEW.state = 'dead'))
    OR (OLD.state = 'deleted' AND (NEW.state = 'pending' OR NEW.state = 'dead'))
    OR (NEW.state = 'pending' AND (OLD.state = 'held' OR OLD.state = 'dead')))
BEGIN
    SELECT RAISE(ABORT, 'work_items: illegal state transition');
END;

ALTER TABLE erasure_requests ADD COLUMN verified_at INTEGER
    CONSTRAINT erasure_requests_verified_at_must_be_null_or_unix_seconds
    CHECK (verified_at IS NULL OR typeof(verified_at) = 'integer');

DROP TRIGGER erasure_requests_insert_state_is_received;
CREATE TRIGGER erasure_requests_insert_state_is_received
BEFORE INSERT ON erasure_requests
WHEN NEW.state <> 'received' OR NEW.resolved_at IS NOT NULL OR NEW.completed_at IS NOT NULL
    OR NEW.verified_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'erasure_requests: insert only subject, external_ref and received_at; state and progress columns are set by forgetd');
END;
