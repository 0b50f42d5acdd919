-- forgetd schema, version 3: the providers forgetd serves are rows of `providers`, not a list
-- written into each table's CHECK.
--
-- * `providers` holds one row per provider key. The store keeps it equal to forgetd's registry
--   (src/providers/registry.rs) at every open, so a provider added to forgetd is accepted here
--   without a migration, and a feeder can ask `SELECT key FROM providers`.
-- * `sessions.provider` is checked against it by triggers (a CHECK cannot read another table),
--   with a literal message that names the rule and where to look. forgetd's own tables
--   (work_items, rules, holds) are written only with keys forgetd parsed against its registry;
--   their CHECK keeps the key's shape.
-- * The per-provider ID rules of the sessions table (KooSearch's alphabet, Convai's "-1",
--   repo_id only for KooSearch) are unchanged.
--
-- SQLite cannot drop a CHECK, so the four tables are rebuilt (the store runs migrations with
-- foreign keys off, as SQLite's "12 steps" require); ids, rows and links are kept as they are.

CREATE TABLE providers (
    key TEXT PRIMARY KEY
        CONSTRAINT providers_key_must_be_1_to_32_of_a_z_0_9_underscore
        CHECK (typeof(key) = 'text' AND length(key) BETWEEN 1 AND 32 AND key NOT GLOB '*[^a-z0-9_]*')
) WITHOUT ROWID;
INSERT INTO providers (key) VALUES ('convai'), ('koosearch');

-- The view names the rebuilt tables: it goes first, or a RENAME would find it broken.
DROP VIEW item_holds;

CREATE TABLE sessions_v3 (
    id          INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL
        CONSTRAINT sessions_provider_must_be_text
        CHECK (typeof(provider) = 'text'),
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
INSERT INTO sessions_v3 (id, provider, scope, session_id, subject, repo_id, created_at, discovered_at)
SELECT id, provider, scope, session_id, subject, repo_id, created_at, discovered_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v3 RENAME TO sessions;
CREATE INDEX sessions_by_subject ON sessions (subject) WHERE subject IS NOT NULL;
CREATE INDEX sessions_by_age ON sessions (provider, scope, created_at);

CREATE TRIGGER sessions_provider_must_be_a_key_of_providers_on_insert
BEFORE INSERT ON sessions
WHEN NOT EXISTS (SELECT 1 FROM providers WHERE key = NEW.provider)
BEGIN
    SELECT RAISE(ABORT, 'sessions_provider_must_be_a_key_of_providers: SELECT key FROM providers lists the providers forgetd serves');
END;
CREATE TRIGGER sessions_provider_must_be_a_key_of_providers_on_update
BEFORE UPDATE OF provider ON sessions
WHEN NOT EXISTS (SELECT 1 FROM providers WHERE key = NEW.provider)
BEGIN
    SELECT RAISE(ABORT, 'sessions_provider_must_be_a_key_of_providers: SELECT key FROM providers lists the providers forgetd serves');
END;

CREATE TABLE work_items_v3 (
    id                INTEGER PRIMARY KEY,
    provider          TEXT NOT NULL
        CONSTRAINT work_items_provider_must_be_a_provider_key
        CHECK (typeof(provider) = 'text' AND length(provider) BETWEEN 1 AND 32),
    scope             TEXT NOT NULL,
    session_id        TEXT NOT NULL,
    repo_id           TEXT,
    state             TEXT NOT NULL DEFAULT 'pending'
        CONSTRAINT work_items_state_must_be_known
        CHECK (state IN ('pending', 'in_flight', 'deleted', 'held', 'dead')),
    -- earliest legal due date of anything that needs this chat gone: the claim order.
    due_at            INTEGER NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_ms   INTEGER NOT NULL DEFAULT 0,
    first_attempt_ms  INTEGER,
    lease_expires_ms  INTEGER,
    batch_id          INTEGER,
    hold_id           INTEGER,
    outcome           TEXT
        CONSTRAINT work_items_outcome_must_be_known
        CHECK (outcome IS NULL OR outcome IN ('deleted', 'already_absent')),
    last_error        TEXT,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    -- the person the chat was resolved for (version 2): a subject hold covers it by this.
    subject           TEXT,
    -- The per-state invariants of the queue state machine (src/store/queue.rs mirrors them).
    CONSTRAINT work_items_in_flight_iff_leased
        CHECK ((state = 'in_flight') = (lease_expires_ms IS NOT NULL AND batch_id IS NOT NULL)),
    CONSTRAINT work_items_deleted_iff_outcome
        CHECK ((state = 'deleted') = (outcome IS NOT NULL)),
    CONSTRAINT work_items_held_iff_hold
        CHECK ((state = 'held') = (hold_id IS NOT NULL)),
    CONSTRAINT work_items_dead_has_reason
        CHECK (state <> 'dead' OR last_error IS NOT NULL),
    CONSTRAINT work_items_finished_iff_terminal
        CHECK ((state IN ('deleted', 'dead')) = (finished_at IS NOT NULL)),
    UNIQUE (provider, scope, session_id)
);
INSERT INTO work_items_v3 (id, provider, scope, session_id, repo_id, state, due_at, attempts,
    next_attempt_ms, first_attempt_ms, lease_expires_ms, batch_id, hold_id, outcome, last_error,
    created_at, finished_at, subject)
SELECT id, provider, scope, session_id, repo_id, state, due_at, attempts,
    next_attempt_ms, first_attempt_ms, lease_expires_ms, batch_id, hold_id, outcome, last_error,
    created_at, finished_at, subject
FROM work_items;
DROP TABLE work_items;
ALTER TABLE work_items_v3 RENAME TO work_items;
CREATE INDEX work_items_pending_by_due ON work_items (provider, due_at, id) WHERE state = 'pending';
CREATE INDEX work_items_pending_by_group ON work_items (provider, scope, repo_id, due_at, id) WHERE state = 'pending';
CREATE INDEX work_items_in_flight ON work_items (batch_id) WHERE state = 'in_flight';
CREATE INDEX work_items_by_subject ON work_items (subject) WHERE subject IS NOT NULL;
CREATE TRIGGER work_items_state_transition_must_be_legal
BEFORE UPDATE OF state ON work_items
WHEN OLD.state <> NEW.state AND NOT (
       (OLD.state = 'pending' AND (NEW.state = 'in_flight' OR NEW.state = 'held' OR NEW.state = 'dead'))
    OR (OLD.state = 'in_flight' AND (NEW.state = 'pending' OR NEW.state = 'deleted' OR NEW.state = 'dead'))
    OR (NEW.state = 'pending' AND (OLD.state = 'held' OR OLD.state = 'dead')))
BEGIN
    SELECT RAISE(ABORT, 'work_items: illegal state transition');
END;

CREATE TABLE rules_v3 (
    name           TEXT PRIMARY KEY
        CONSTRAINT rules_name_must_be_1_to_64_of_A_Z_a_z_0_9_dot_underscore_dash
        CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._-]*'),
    provider       TEXT NOT NULL
        CONSTRAINT rules_provider_must_be_a_provider_key
        CHECK (typeof(provider) = 'text' AND length(provider) BETWEEN 1 AND 32),
    scope          TEXT NOT NULL
        CONSTRAINT rules_scope_must_be_1_to_64_chars
        CHECK (length(scope) BETWEEN 1 AND 64),
    max_age_secs   INTEGER NOT NULL
        CONSTRAINT rules_max_age_must_be_positive CHECK (max_age_secs > 0),
    schedule       TEXT NOT NULL,
    timezone       TEXT NOT NULL DEFAULT 'UTC',
    discover       INTEGER NOT NULL DEFAULT 0 CHECK (discover IN (0, 1)),
    max_deletions  INTEGER NOT NULL DEFAULT 10000
        CONSTRAINT rules_max_deletions_must_be_positive CHECK (max_deletions > 0),
    origin         TEXT NOT NULL
        CONSTRAINT rules_origin_must_be_config_or_cli CHECK (origin IN ('config', 'cli')),
    created_at     INTEGER NOT NULL DEFAULT (unixepoch()),
    updated_at     INTEGER NOT NULL DEFAULT (unixepoch())
);
INSERT INTO rules_v3 (name, provider, scope, max_age_secs, schedule, timezone, discover,
    max_deletions, origin, created_at, updated_at)
SELECT name, provider, scope, max_age_secs, schedule, timezone, discover,
    max_deletions, origin, created_at, updated_at
FROM rules;
DROP TABLE rules;
ALTER TABLE rules_v3 RENAME TO rules;

CREATE TABLE holds_v3 (
    id          INTEGER PRIMARY KEY,
    subject     TEXT,
    provider    TEXT
        CONSTRAINT holds_provider_must_be_null_or_a_provider_key
        CHECK (provider IS NULL OR (typeof(provider) = 'text' AND length(provider) BETWEEN 1 AND 32)),
    scope       TEXT,
    session_id  TEXT,
    reason      TEXT NOT NULL
        CONSTRAINT holds_reason_must_not_be_blank CHECK (length(trim(reason)) > 0),
    created_at  INTEGER NOT NULL DEFAULT (unixepoch()),
    removed_at  INTEGER,
    CONSTRAINT holds_cover_a_subject_or_one_chat
        CHECK ((subject IS NOT NULL AND length(trim(subject)) > 0
                AND provider IS NULL AND scope IS NULL AND session_id IS NULL)
            OR (subject IS NULL AND provider IS NOT NULL AND scope IS NOT NULL AND session_id IS NOT NULL))
);
INSERT INTO holds_v3 (id, subject, provider, scope, session_id, reason, created_at, removed_at)
SELECT id, subject, provider, scope, session_id, reason, created_at, removed_at FROM holds;
DROP TABLE holds;
ALTER TABLE holds_v3 RENAME TO holds;
CREATE INDEX holds_active_subject ON holds (subject) WHERE removed_at IS NULL AND subject IS NOT NULL;
CREATE INDEX holds_active_chat ON holds (provider, scope, session_id) WHERE removed_at IS NULL AND session_id IS NOT NULL;

-- Unchanged from version 2.
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
