-- forgetd schema, version 6: the keyed audit chain (src/audit.rs).
--
-- * `audit_seals`: one seal per link, HMAC-SHA256 under the chain key (derived from the subject
--   key, which only forgetd's user reads) over the link's seq and hash. `late` = 1 when the daemon
--   sealed a link some other process appended without the key (a CLI run by a feeder); links of
--   the certifying kinds are never sealed late. Append-only, like the chain.
-- * `audit_keying.keyed_from_seq`: the first link appended under this schema. Links before it
--   were written unkeyed by an older forgetd; the daemon seals them late at its first start, and
--   the "certifying links are sealed at append" rule applies from here on.
-- * `erasure_requests.closing_seq`: the seq of the closing event (`request.completed` /
--   `request.failed`) of the request's current completion. NULL while open, and when a process
--   without the key completed it (placing a hold): the daemon then appends the closing event.

CREATE TABLE audit_seals (
    seq   INTEGER PRIMARY KEY REFERENCES audit_log (seq),
    seal  TEXT NOT NULL
        CONSTRAINT audit_seals_seal_must_be_64_hex
        CHECK (length(seal) = 64 AND seal NOT GLOB '*[^0-9a-f]*'),
    late  INTEGER NOT NULL DEFAULT 0
        CONSTRAINT audit_seals_late_must_be_0_or_1
        CHECK (late IN (0, 1))
) WITHOUT ROWID;

CREATE TRIGGER audit_seals_are_append_only_no_update
BEFORE UPDATE ON audit_seals
BEGIN
    SELECT RAISE(ABORT, 'audit_seals: seals are append-only');
END;

CREATE TRIGGER audit_seals_are_append_only_no_delete
BEFORE DELETE ON audit_seals
BEGIN
    SELECT RAISE(ABORT, 'audit_seals: seals are append-only');
END;

CREATE TABLE audit_keying (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    keyed_from_seq  INTEGER NOT NULL
);
INSERT INTO audit_keying (id, keyed_from_seq)
    SELECT 1, coalesce(max(seq), 0) + 1 FROM audit_log;

CREATE TRIGGER audit_keying_is_fixed_no_update
BEFORE UPDATE ON audit_keying
BEGIN
    SELECT RAISE(ABORT, 'audit_keying: fixed at migration');
END;

CREATE TRIGGER audit_keying_is_fixed_no_delete
BEFORE DELETE ON audit_keying
BEGIN
    SELECT RAISE(ABORT, 'audit_keying: fixed at migration');
END;

ALTER TABLE erasure_requests ADD COLUMN closing_seq INTEGER;
UPDATE erasure_requests SET closing_seq = (
    SELECT max(a.seq) FROM audit_log a
    WHERE a.request_id = erasure_requests.id AND a.kind IN ('request.completed', 'request.failed'))
WHERE state IN ('complete', 'failed');

DROP TRIGGER erasure_requests_insert_state_is_received;
CREATE TRIGGER erasure_requests_insert_state_is_received
BEFORE INSERT ON erasure_requests
WHEN NEW.state <> 'received' OR NEW.resolved_at IS NOT NULL OR NEW.completed_at IS NOT NULL
    OR NEW.verified_at IS NOT NULL OR NEW.closing_seq IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'erasure_requests: insert only subject, external_ref and received_at; state and progress columns are set by forgetd');
END;
