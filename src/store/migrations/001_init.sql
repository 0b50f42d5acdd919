-- forgetd schema, version 1.
--
-- Rules for this file (see src/store/mod.rs):
-- * Feeders write `sessions` and `erasure_requests` with Debian 12's sqlite3 (3.40), foreign keys
--   off. So: no function newer than 3.40, no function forgetd registers, no RAISE with a computed
--   message. Every CHECK is named after what it enforces, so "CHECK constraint failed: <name>"
--   tells the feeder what to fix; triggers carry literal messages.
-- * Times are UTC unix seconds (INTEGER). Columns ending in _ms are unix milliseconds and belong to
--   forgetd's scheduling (backoff and leases need sub-second resolution).

-- The inventory of provider chats. Feeder-writable.
CREATE TABLE sessions (
    id          INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL
        CONSTRAINT sessions_provider_must_be_convai_or_koosearch
        CHECK (provider IN ('convai', 'koosearch')),
    scope       TEXT NOT NULL
        CONSTRAINT sessions_scope_must_be_1_to_64_chars_and_not_star
        CHECK (length(scope) BETWEEN 1 AND 64 AND scope <> '*'),
    session_id  TEXT NOT NULL
        CONSTRAINT sessions_session_id_must_be_1_to_64_chars
        CHECK (length(session_id) BETWEEN 1 AND 64),
    subject     TEXT
        CONSTRAINT sessions_subject_must_be_null_or_not_blank
        CHECK (subject IS NULL OR length(trim(subject)) > 0),
    repo_id     TEXT
        CONSTRAINT sessions_repo_id_only_for_koosearch_1_to_64_of_A_Z_a_z_0_9_underscore_dash
        CHECK (repo_id IS NULL OR (provider = 'koosearch'
               AND length(repo_id) BETWEEN 1 AND 64
               AND repo_id NOT GLOB '*[^A-Za-z0-9_-]*')),
    created_at  INTEGER NOT NULL DEFAULT (unixepoch())
        CONSTRAINT sessions_created_at_must_be_unix_seconds
        CHECK (typeof(created_at) = 'integer' AND created_at >= 0),
    -- forgetd's own: when provider discovery (not a feeder) added the row.
    discovered_at INTEGER,
    CONSTRAINT sessions_koosearch_ids_must_be_A_Z_a_z_0_9_underscore_dash
        CHECK (provider <> 'koosearch'
               OR (session_id NOT GLOB '*[^A-Za-z0-9_-]*' AND scope NOT GLOB '*[^A-Za-z0-9_-]*')),
    CONSTRAINT sessions_convai_session_id_minus_1_means_new_session_not_a_chat
        CHECK (provider <> 'convai' OR session_id <> '-1'),
    UNIQUE (provider, scope, session_id)
);
CREATE INDEX sessions_by_subject ON sessions (subject) WHERE subject IS NOT NULL;
CREATE INDEX sessions_by_age ON sessions (provider, scope, created_at);

-- Erasure requests. Feeder-writable: `INSERT INTO erasure_requests(subject, external_ref)` is enough.
CREATE TABLE erasure_requests (
    id            INTEGER PRIMARY KEY,
    subject       TEXT NOT NULL
        CONSTRAINT erasure_requests_subject_must_not_be_blank
        CHECK (length(trim(subject)) > 0),
    external_ref  TEXT UNIQUE
        CONSTRAINT erasure_requests_external_ref_must_be_null_or_1_to_256_chars
        CHECK (external_ref IS NULL OR length(external_ref) BETWEEN 1 AND 256),
    received_at   INTEGER NOT NULL DEFAULT (unixepoch())
        CONSTRAINT erasure_requests_received_at_must_be_unix_seconds
        CHECK (typeof(received_at) = 'integer' AND received_at >= 0),
    -- forgetd's own columns, all with defaults.
    state         TEXT NOT NULL DEFAULT 'received'
        CONSTRAINT erasure_requests_state_must_be_known
        CHECK (state IN ('received', 'in_progress', 'complete', 'failed')),
    due_at        INTEGER,
    resolved_at   INTEGER,
    completed_at  INTEGER,
    -- keyed hash of the subject (audit); the clear subject is replaced by it once complete.
    subject_hash  TEXT,
    updated_at    INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE INDEX erasure_requests_by_state ON erasure_requests (state, due_at);

-- A feeder files a request; it does not get to say how far along it is.
CREATE TRIGGER erasure_requests_insert_state_is_received
BEFORE INSERT ON erasure_requests
WHEN NEW.state <> 'received' OR NEW.resolved_at IS NOT NULL OR NEW.completed_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'erasure_requests: insert only subject, external_ref and received_at; state and progress columns are set by forgetd');
END;

-- One row per chat to delete: the unit of work. A chat is one item however many requests or rules
-- name it (deletes are per chat), linked to requests through request_items.
CREATE TABLE work_items (
    id                INTEGER PRIMARY KEY,
    provider          TEXT NOT NULL
        CONSTRAINT work_items_provider_must_be_convai_or_koosearch
        CHECK (provider IN ('convai', 'koosearch')),
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
-- claim: the most urgent due pending item of a provider, then its (scope, repo) group.
CREATE INDEX work_items_pending_by_due ON work_items (provider, due_at, id) WHERE state = 'pending';
CREATE INDEX work_items_pending_by_group ON work_items (provider, scope, repo_id, due_at, id) WHERE state = 'pending';
CREATE INDEX work_items_in_flight ON work_items (batch_id) WHERE state = 'in_flight';
-- No index on state alone: `status` counts by a scan, which costs less than keeping one in step
-- with every claim and answer.

-- The legal transitions of the state machine (src/store/queue.rs `transition`), enforced here too.
-- Written as plain comparisons: a row-value IN (VALUES ...) list costs an ephemeral table per
-- updated row, a third of the queue's throughput.
CREATE TRIGGER work_items_state_transition_must_be_legal
BEFORE UPDATE OF state ON work_items
WHEN OLD.state <> NEW.state AND NOT (
       (OLD.state = 'pending' AND (NEW.state = 'in_flight' OR NEW.state = 'held' OR NEW.state = 'dead'))
    OR (OLD.state = 'in_flight' AND (NEW.state = 'pending' OR NEW.state = 'deleted' OR NEW.state = 'dead'))
    OR (NEW.state = 'pending' AND (OLD.state = 'held' OR OLD.state = 'dead')))
BEGIN
    SELECT RAISE(ABORT, 'work_items: illegal state transition');
END;

CREATE TABLE request_items (
    request_id INTEGER NOT NULL REFERENCES erasure_requests (id),
    item_id    INTEGER NOT NULL REFERENCES work_items (id),
    PRIMARY KEY (request_id, item_id)
) WITHOUT ROWID;
CREATE INDEX request_items_by_item ON request_items (item_id);

-- One row per delete call sent (or being sent).
CREATE TABLE batches (
    id           INTEGER PRIMARY KEY,
    provider     TEXT NOT NULL,
    scope        TEXT NOT NULL,
    size         INTEGER NOT NULL,
    claimed_ms   INTEGER NOT NULL,
    answered_ms  INTEGER,
    outcome      TEXT
);

-- Retention rules. Rules from the config file (origin 'config') are owned by the file and re-synced
-- at start and reload; rules added with `forgetd rules add` (origin 'cli') survive reloads.
CREATE TABLE rules (
    name           TEXT PRIMARY KEY
        CONSTRAINT rules_name_must_be_1_to_64_of_A_Z_a_z_0_9_dot_underscore_dash
        CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._-]*'),
    provider       TEXT NOT NULL
        CONSTRAINT rules_provider_must_be_convai_or_koosearch
        CHECK (provider IN ('convai', 'koosearch')),
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

-- Scheduling and guard-rail state of each rule, kept apart from the rule so a config re-sync
-- never loses when a rule last ran.
CREATE TABLE rule_state (
    rule_name            TEXT PRIMARY KEY,
    last_run_at          INTEGER,
    running_since        INTEGER,
    -- set when a run matched more than max_deletions; cleared by `rules approve` or a config change
    awaiting_approval    INTEGER,
    approved             INTEGER NOT NULL DEFAULT 0 CHECK (approved IN (0, 1))
);

CREATE TABLE rule_runs (
    id           INTEGER PRIMARY KEY,
    rule_name    TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    matched      INTEGER NOT NULL DEFAULT 0,
    enqueued     INTEGER NOT NULL DEFAULT 0,
    held         INTEGER NOT NULL DEFAULT 0,
    outcome      TEXT
);
CREATE INDEX rule_runs_by_rule ON rule_runs (rule_name, id);

-- Legal holds: a whole subject, or one chat. A removed hold keeps its row (removed_at) for the record.
CREATE TABLE holds (
    id          INTEGER PRIMARY KEY,
    subject     TEXT,
    provider    TEXT
        CONSTRAINT holds_provider_must_be_convai_or_koosearch
        CHECK (provider IS NULL OR provider IN ('convai', 'koosearch')),
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
CREATE INDEX holds_active_subject ON holds (subject) WHERE removed_at IS NULL AND subject IS NOT NULL;
CREATE INDEX holds_active_chat ON holds (provider, scope, session_id) WHERE removed_at IS NULL AND session_id IS NOT NULL;

-- A provider the executor stopped using until an operator acts (auth, permission, API not enabled).
CREATE TABLE provider_state (
    provider       TEXT PRIMARY KEY,
    paused_reason  TEXT,
    paused_at      INTEGER,
    next_probe_ms  INTEGER,
    probes         INTEGER NOT NULL DEFAULT 0
);

-- Append-only audit trail, a SHA-256 hash chain (src/audit.rs).
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    request_id  INTEGER,
    data        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_log_by_request ON audit_log (request_id) WHERE request_id IS NOT NULL;
CREATE TRIGGER audit_log_is_append_only_no_update
BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be changed');
END;
CREATE TRIGGER audit_log_is_append_only_no_delete
BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be deleted');
END;

-- Which active hold covers which work item: a hold on the chat itself, or a hold on the subject the
-- inventory says owns the chat. (A chat with no known owner is covered only by a chat hold.)
CREATE VIEW item_holds AS
    SELECT w.id AS item_id, h.id AS hold_id
    FROM work_items w
    JOIN holds h ON h.removed_at IS NULL AND h.session_id IS NOT NULL
        AND h.provider = w.provider AND h.scope = w.scope AND h.session_id = w.session_id
    UNION ALL
    SELECT w.id AS item_id, h.id AS hold_id
    FROM work_items w
    JOIN sessions s ON s.provider = w.provider AND s.scope = w.scope AND s.session_id = w.session_id
    JOIN holds h ON h.removed_at IS NULL AND h.subject IS NOT NULL AND h.subject = s.subject;
