-- forgetd schema, version 2: the feeder's life (SPEC "The feeder's life").
--
-- * Types are enforced at INSERT and UPDATE: a value of the wrong storage class (a BLOB where text
--   is meant, text where a time is meant) is refused by a named CHECK on typeof(), so nothing
--   enters the queue that forgetd cannot read. A column's affinity still turns an integer into
--   text where text is meant ('4711' for 4711), which is what a feeder means by it.
-- * Requests are records: a DELETE of an erasure_requests row is refused; ids are never reused
--   (AUTOINCREMENT), so no later request inherits another's items.
-- * A work item remembers the person it was resolved for (`work_items.subject`), so a subject
--   hold keeps covering a chat whatever happens to its inventory row; coverage is the union of
--   the chat holds, the work item's owner and the inventory's owner.
-- * A held rule run remembers how many chats it matched; `rules approve` releases runs up to
--   that count only.
--
-- SQLite cannot add a CHECK to an existing table, so the two feeder tables are rebuilt (the
-- store runs migrations with foreign keys off, as SQLite's "12 steps" require). Rows written
-- before this version with a BLOB in a text column are kept, converted with CAST (a driver that
-- sent bytes sent the UTF-8 of the text it meant).

-- The view names `sessions`: it goes first, or the rebuild's RENAME would find it broken.
DROP VIEW item_holds;

CREATE TABLE sessions_v2 (
    id          INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL
        CONSTRAINT sessions_provider_must_be_convai_or_koosearch
        CHECK (provider IN ('convai', 'koosearch')),
    scope       TEXT NOT NULL
        CONSTRAINT sessions_scope_must_be_text
        CHECK (typeof(scope) = 'text')
        CONSTRAINT sessions_scope_must_be_1_to_64_chars_and_not_star
        CHECK (length(scope) BETWEEN 1 AND 64 AND scope <> '*'),
    session_id  TEXT NOT NULL
        CONSTRAINT sessions_session_id_must_be_text
        CHECK (typeof(session_id) = 'text')
        CONSTRAINT sessions_session_id_must_be_1_to_64_chars
        CHECK (length(session_id) BETWEEN 1 AND 64),
    subject     TEXT
        CONSTRAINT sessions_subject_must_be_null_or_text
        CHECK (subject IS NULL OR typeof(subject) = 'text')
        CONSTRAINT sessions_subject_must_be_null_or_not_blank
        CHECK (subject IS NULL OR length(trim(subject)) > 0),
    repo_id     TEXT
        CONSTRAINT sessions_repo_id_must_be_null_or_text
        CHECK (repo_id IS NULL OR typeof(repo_id) = 'text')
        CONSTRAINT sessions_repo_id_only_for_koosearch_1_to_64_of_A_Z_a_z_0_9_underscore_dash
        CHECK (repo_id IS NULL OR (provider = 'koosearch'
               AND length(repo_id) BETWEEN 1 AND 64
               AND repo_id NOT GLOB '*[^A-Za-z0-9_-]*')),
    created_at  INTEGER NOT NULL DEFAULT (unixepoch())
        CONSTRAINT sessions_created_at_must_be_unix_seconds
        CHECK (typeof(created_at) = 'integer' AND created_at >= 0),
    -- forgetd's own: when provider discovery (not a feeder) added the row.
    discovered_at INTEGER
        CONSTRAINT sessions_discovered_at_must_be_null_or_unix_seconds
        CHECK (discovered_at IS NULL OR typeof(discovered_at) = 'integer'),
    CONSTRAINT sessions_koosearch_ids_must_be_A_Z_a_z_0_9_underscore_dash
        CHECK (provider <> 'koosearch'
               OR (session_id NOT GLOB '*[^A-Za-z0-9_-]*' AND scope NOT GLOB '*[^A-Za-z0-9_-]*')),
    CONSTRAINT sessions_convai_session_id_minus_1_means_new_session_not_a_chat
        CHECK (provider <> 'convai' OR session_id <> '-1'),
    UNIQUE (provider, scope, session_id)
);
INSERT INTO sessions_v2 (id, provider, scope, session_id, subject, repo_id, created_at, discovered_at)
SELECT id, CAST(provider AS TEXT), CAST(scope AS TEXT), CAST(session_id AS TEXT),
       CASE WHEN subject IS NULL THEN NULL ELSE CAST(subject AS TEXT) END,
       CASE WHEN repo_id IS NULL THEN NULL ELSE CAST(repo_id AS TEXT) END,
       created_at, discovered_at
FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v2 RENAME TO sessions;
CREATE INDEX sessions_by_subject ON sessions (subject) WHERE subject IS NOT NULL;
CREATE INDEX sessions_by_age ON sessions (provider, scope, created_at);

CREATE TABLE erasure_requests_v2 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    subject       TEXT NOT NULL
        CONSTRAINT erasure_requests_subject_must_be_text
        CHECK (typeof(subject) = 'text')
        CONSTRAINT erasure_requests_subject_must_not_be_blank
        CHECK (length(trim(subject)) > 0),
    external_ref  TEXT UNIQUE
        CONSTRAINT erasure_requests_external_ref_must_be_null_or_text
        CHECK (external_ref IS NULL OR typeof(external_ref) = 'text')
        CONSTRAINT erasure_requests_external_ref_must_be_null_or_1_to_256_chars
        CHECK (external_ref IS NULL OR length(external_ref) BETWEEN 1 AND 256),
    received_at   INTEGER NOT NULL DEFAULT (unixepoch())
        CONSTRAINT erasure_requests_received_at_must_be_unix_seconds
        CHECK (typeof(received_at) = 'integer' AND received_at >= 0),
    -- forgetd's own columns, all with defaults.
    state         TEXT NOT NULL DEFAULT 'received'
        CONSTRAINT erasure_requests_state_must_be_known
        CHECK (state IN ('received', 'in_progress', 'complete', 'failed')),
    due_at        INTEGER
        CONSTRAINT erasure_requests_due_at_must_be_null_or_unix_seconds
        CHECK (due_at IS NULL OR typeof(due_at) = 'integer'),
    resolved_at   INTEGER
        CONSTRAINT erasure_requests_resolved_at_must_be_null_or_unix_seconds
        CHECK (resolved_at IS NULL OR typeof(resolved_at) = 'integer'),
    completed_at  INTEGER
        CONSTRAINT erasure_requests_completed_at_must_be_null_or_unix_seconds
        CHECK (completed_at IS NULL OR typeof(completed_at) = 'integer'),
    -- keyed hash of the subject (audit); the clear subject is replaced by it once complete.
    subject_hash  TEXT,
    updated_at    INTEGER NOT NULL DEFAULT (unixepoch())
        CONSTRAINT erasure_requests_updated_at_must_be_unix_seconds
        CHECK (typeof(updated_at) = 'integer')
);
INSERT INTO erasure_requests_v2 (id, subject, external_ref, received_at, state, due_at, resolved_at,
                                 completed_at, subject_hash, updated_at)
SELECT id, CAST(subject AS TEXT),
       CASE WHEN external_ref IS NULL THEN NULL ELSE CAST(external_ref AS TEXT) END,
       received_at, state,
       CASE WHEN typeof(due_at) = 'integer' THEN due_at ELSE NULL END,
       CASE WHEN typeof(resolved_at) = 'integer' THEN resolved_at ELSE NULL END,
       CASE WHEN typeof(completed_at) = 'integer' THEN completed_at ELSE NULL END,
       subject_hash,
       CASE WHEN typeof(updated_at) = 'integer' THEN updated_at ELSE received_at END
FROM erasure_requests;
DROP TABLE erasure_requests;
ALTER TABLE erasure_requests_v2 RENAME TO erasure_requests;
CREATE INDEX erasure_requests_by_state ON erasure_requests (state, due_at);

-- A feeder files a request; it does not get to say how far along it is.
CREATE TRIGGER erasure_requests_insert_state_is_received
BEFORE INSERT ON erasure_requests
WHEN NEW.state <> 'received' OR NEW.resolved_at IS NOT NULL OR NEW.completed_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'erasure_requests: insert only subject, external_ref and received_at; state and progress columns are set by forgetd');
END;

-- Requests are records: the certificate of erasure and the deadline depend on them.
CREATE TRIGGER erasure_requests_are_records_and_cannot_be_deleted
BEFORE DELETE ON erasure_requests
BEGIN
    SELECT RAISE(ABORT, 'erasure_requests: requests are records and cannot be deleted; a completed request keeps only the keyed hash of its subject');
END;

-- The person a work item was resolved for: subject holds cover it through this, not only
-- through the inventory row a feeder may delete. NULL for chats with no known owner, and set to
-- NULL once the chat is deleted (data minimisation applies to what is gone).
ALTER TABLE work_items ADD COLUMN subject TEXT;
UPDATE work_items SET subject = (
    SELECT s.subject FROM sessions s
    WHERE s.provider = work_items.provider AND s.scope = work_items.scope AND s.session_id = work_items.session_id)
WHERE state <> 'deleted';
CREATE INDEX work_items_by_subject ON work_items (subject) WHERE subject IS NOT NULL;

-- Which active hold covers which work item: a hold on the chat itself, or a hold on the subject
-- the item was resolved for, or on the subject the inventory says owns the chat now. (A chat with
-- no known owner is covered only by a chat hold.)
CREATE VIEW item_holds AS
    SELECT w.id AS item_id, h.id AS hold_id
    FROM work_items w
    JOIN holds h ON h.removed_at IS NULL AND h.session_id IS NOT NULL
        AND h.provider = w.provider AND h.scope = w.scope AND h.session_id = w.session_id
    UNION ALL
    SELECT w.id AS item_id, h.id AS hold_id
    FROM work_items w
    JOIN holds h ON h.removed_at IS NULL AND h.subject IS NOT NULL AND h.subject = w.subject
    UNION ALL
    SELECT w.id AS item_id, h.id AS hold_id
    FROM work_items w
    JOIN sessions s ON s.provider = w.provider AND s.scope = w.scope AND s.session_id = w.session_id
    JOIN holds h ON h.removed_at IS NULL AND h.subject IS NOT NULL AND h.subject = s.subject;

-- The count a held rule run showed, and the count an approval released.
ALTER TABLE rule_state ADD COLUMN awaiting_matched INTEGER;
ALTER TABLE rule_state ADD COLUMN approved_up_to INTEGER;
