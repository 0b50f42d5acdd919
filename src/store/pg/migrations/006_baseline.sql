-- forgetd schema on PostgreSQL, version 6: the same tables, columns, constraint names and trigger
-- messages as SQLite's migrations 001-006 leave, written directly (SQLite's table rebuilds in
-- 002/003 exist only because SQLite cannot alter a CHECK).
--
-- Rules for this file (see src/store/pg/mod.rs):
-- * Feeders write `sessions` and `erasure_requests` (psql, psycopg) as on SQLite, and what they
--   are refused names the same constraint or carries the same literal message.
-- * Every integer is bigint (the SQL forgetd runs binds 64-bit integers), every text column
--   compares as bytes (COLLATE "C", SQLite's BINARY), and 0/1 flags stay integers so one statement
--   text serves both engines.
-- * A type the column enforces needs no CHECK; where SQLite's CHECK names a type rule the name is
--   kept, over what PostgreSQL can still get wrong: bytes stored in a text column as `\x...`.
-- * Times are UTC unix seconds; columns ending in _ms are unix milliseconds.

-- Unix seconds now, SQLite's unixepoch(): column defaults and forgetd's statements use it.
CREATE FUNCTION unixepoch() RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT floor(extract(epoch FROM now()))::bigint $$;

-- A trigger that refuses the row with its first argument as the message.
CREATE FUNCTION forgetd_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'raise_exception';
END $$;

CREATE TABLE providers (
    key text COLLATE "C" PRIMARY KEY
        CONSTRAINT providers_key_must_be_1_to_32_of_a_z_0_9_underscore
        CHECK (length(key) BETWEEN 1 AND 32 AND key !~ '[^a-z0-9_]')
);

-- The inventory of provider chats. Feeder-writable.
CREATE TABLE sessions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider    text COLLATE "C" NOT NULL
        CONSTRAINT sessions_provider_must_be_text CHECK (left(provider, 2) <> '\x'),
    scope       text COLLATE "C" NOT NULL
        CONSTRAINT sessions_scope_must_be_text CHECK (left(scope, 2) <> '\x')
        CONSTRAINT sessions_scope_must_be_1_to_64_chars_and_not_star
        CHECK (length(scope) BETWEEN 1 AND 64 AND scope <> '*'),
    session_id  text COLLATE "C" NOT NULL
        CONSTRAINT sessions_session_id_must_be_text CHECK (left(session_id, 2) <> '\x')
        CONSTRAINT sessions_session_id_must_be_1_to_64_chars
        CHECK (length(session_id) BETWEEN 1 AND 64),
    subject     text COLLATE "C"
        CONSTRAINT sessions_subject_must_be_null_or_text
        CHECK (subject IS NULL OR left(subject, 2) <> '\x')
        CONSTRAINT sessions_subject_must_be_null_or_not_blank
        CHECK (subject IS NULL OR length(trim(subject)) > 0),
    repo_id     text COLLATE "C"
        CONSTRAINT sessions_repo_id_must_be_null_or_text
        CHECK (repo_id IS NULL OR left(repo_id, 2) <> '\x')
        -- The full name (74 bytes) is longer than a PostgreSQL name: sessions_check() raises it.
        CONSTRAINT sessions_repo_id_only_for_koosearch
        CHECK (repo_id IS NULL OR (provider = 'koosearch'
               AND length(repo_id) BETWEEN 1 AND 64 AND repo_id !~ '[^A-Za-z0-9_-]')),
    created_at  bigint NOT NULL DEFAULT unixepoch()
        CONSTRAINT sessions_created_at_must_be_unix_seconds CHECK (created_at >= 0),
    -- forgetd's own: when provider discovery (not a feeder) added the row.
    discovered_at bigint,
    CONSTRAINT "sessions_koosearch_ids_must_be_A_Z_a_z_0_9_underscore_dash"
        CHECK (provider <> 'koosearch'
               OR (session_id !~ '[^A-Za-z0-9_-]' AND scope !~ '[^A-Za-z0-9_-]')),
    CONSTRAINT sessions_convai_session_id_minus_1_means_new_session_not_a_chat
        CHECK (provider <> 'convai' OR session_id <> '-1'),
    UNIQUE (provider, scope, session_id)
);
CREATE INDEX sessions_by_subject ON sessions (subject) WHERE subject IS NOT NULL;
CREATE INDEX sessions_by_age ON sessions (provider, scope, created_at);

-- The provider must be one this forgetd serves (not a foreign key: forgetd rewrites `providers`
-- at open), and a repo only for KooSearch, 1 to 64 of A-Z a-z 0-9 _ -.
CREATE FUNCTION sessions_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM providers WHERE key = NEW.provider) THEN
        RAISE EXCEPTION 'sessions_provider_must_be_a_key_of_providers: SELECT key FROM providers lists the providers forgetd serves'
            USING ERRCODE = 'raise_exception';
    END IF;
    IF NEW.repo_id IS NOT NULL AND NOT (NEW.provider = 'koosearch'
           AND length(NEW.repo_id) BETWEEN 1 AND 64 AND NEW.repo_id !~ '[^A-Za-z0-9_-]') THEN
        RAISE EXCEPTION 'new row for relation "sessions" violates check constraint "sessions_repo_id_only_for_koosearch_1_to_64_of_A_Z_a_z_0_9_underscore_dash"'
            USING ERRCODE = 'check_violation', TABLE = 'sessions',
                  CONSTRAINT = 'sessions_repo_id_only_for_koosearch_1_to_64_of_A_Z_a_z_0_9_underscore_dash';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sessions_provider_must_be_a_key_of_providers_on_insert
    BEFORE INSERT ON sessions FOR EACH ROW EXECUTE FUNCTION sessions_check();
CREATE TRIGGER sessions_provider_must_be_a_key_of_providers_on_update
    BEFORE UPDATE OF provider, repo_id ON sessions FOR EACH ROW EXECUTE FUNCTION sessions_check();

-- Erasure requests. Feeder-writable (insert only).
CREATE TABLE erasure_requests (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject       text COLLATE "C" NOT NULL
        CONSTRAINT erasure_requests_subject_must_be_text CHECK (left(subject, 2) <> '\x')
        CONSTRAINT erasure_requests_subject_must_not_be_blank CHECK (length(trim(subject)) > 0),
    external_ref  text COLLATE "C" UNIQUE
        CONSTRAINT erasure_requests_external_ref_must_be_null_or_text
        CHECK (external_ref IS NULL OR left(external_ref, 2) <> '\x')
        CONSTRAINT erasure_requests_external_ref_must_be_null_or_1_to_256_chars
        CHECK (external_ref IS NULL OR length(external_ref) BETWEEN 1 AND 256),
    received_at   bigint NOT NULL DEFAULT unixepoch()
        CONSTRAINT erasure_requests_received_at_must_be_unix_seconds CHECK (received_at >= 0),
    -- forgetd's own columns, all with defaults.
    state         text COLLATE "C" NOT NULL DEFAULT 'received'
        CONSTRAINT erasure_requests_state_must_be_known
        CHECK (state IN ('received', 'in_progress', 'complete', 'failed')),
    due_at        bigint,
    resolved_at   bigint,
    completed_at  bigint,
    -- keyed hash of the subject (audit); the clear subject is replaced by it once complete.
    subject_hash  text COLLATE "C",
    updated_at    bigint NOT NULL DEFAULT unixepoch(),
    verified_at   bigint,
    closing_seq   bigint
);
CREATE INDEX erasure_requests_by_state ON erasure_requests (state, due_at);
CREATE TRIGGER erasure_requests_insert_state_is_received
    BEFORE INSERT ON erasure_requests FOR EACH ROW
    WHEN (NEW.state <> 'received' OR NEW.resolved_at IS NOT NULL OR NEW.completed_at IS NOT NULL
          OR NEW.verified_at IS NOT NULL OR NEW.closing_seq IS NOT NULL)
    EXECUTE FUNCTION forgetd_refuse('erasure_requests: insert only subject, external_ref and received_at; state and progress columns are set by forgetd');
CREATE TRIGGER erasure_requests_are_records_and_cannot_be_deleted
    BEFORE DELETE ON erasure_requests FOR EACH ROW
    EXECUTE FUNCTION forgetd_refuse('erasure_requests: requests are records and cannot be deleted; a completed request keeps only the keyed hash of its subject');
-- TRUNCATE skips row triggers.
CREATE TRIGGER erasure_requests_are_records_and_cannot_be_truncated
    BEFORE TRUNCATE ON erasure_requests FOR EACH STATEMENT
    EXECUTE FUNCTION forgetd_refuse('erasure_requests: requests are records and cannot be deleted; a completed request keeps only the keyed hash of its subject');

CREATE TABLE work_items (
    id                bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    provider          text COLLATE "C" NOT NULL
        CONSTRAINT work_items_provider_must_be_a_provider_key
        CHECK (length(provider) BETWEEN 1 AND 32),
    scope             text COLLATE "C" NOT NULL,
    session_id        text COLLATE "C" NOT NULL,
    repo_id           text COLLATE "C",
    state             text COLLATE "C" NOT NULL DEFAULT 'pending'
        CONSTRAINT work_items_state_must_be_known
        CHECK (state IN ('pending', 'in_flight', 'deleted', 'held', 'dead')),
    -- earliest legal due date of anything that needs this chat gone: the claim order.
    due_at            bigint NOT NULL,
    attempts          bigint NOT NULL DEFAULT 0
        CONSTRAINT work_items_attempts_must_not_be_negative CHECK (attempts >= 0),
    next_attempt_ms   bigint NOT NULL DEFAULT 0,
    first_attempt_ms  bigint,
    lease_expires_ms  bigint,
    batch_id          bigint,
    hold_id           bigint,
    outcome           text COLLATE "C"
        CONSTRAINT work_items_outcome_must_be_known
        CHECK (outcome IS NULL OR outcome IN ('deleted', 'already_absent')),
    last_error        text,
    created_at        bigint NOT NULL,
    finished_at       bigint,
    -- the person the chat was resolved for: a subject hold covers it by this.
    subject           text COLLATE "C",
    verify_state      text COLLATE "C"
        CONSTRAINT work_items_verify_state_must_be_known
        CHECK (verify_state IS NULL OR verify_state IN ('verified_absent', 'unverified', 'not_checked')),
    verified_at       bigint,
    verify_attempts   bigint NOT NULL DEFAULT 0,
    verify_next_ms    bigint NOT NULL DEFAULT 0,
    verify_error      text,
    reappeared        bigint NOT NULL DEFAULT 0,
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
CREATE INDEX work_items_pending_by_due ON work_items (provider, due_at, id) WHERE state = 'pending';
CREATE INDEX work_items_pending_by_group ON work_items (provider, scope, repo_id, due_at, id) WHERE state = 'pending';
CREATE INDEX work_items_in_flight ON work_items (batch_id) WHERE state = 'in_flight';
CREATE INDEX work_items_by_subject ON work_items (subject) WHERE subject IS NOT NULL;
CREATE INDEX work_items_to_verify ON work_items (provider, finished_at, id)
    WHERE state = 'deleted' AND verify_state IS NULL;
CREATE TRIGGER work_items_state_transition_must_be_legal
    BEFORE UPDATE OF state ON work_items FOR EACH ROW
    WHEN (OLD.state <> NEW.state AND NOT (
           (OLD.state = 'pending' AND (NEW.state = 'in_flight' OR NEW.state = 'held' OR NEW.state = 'dead'))
        OR (OLD.state = 'in_flight' AND (NEW.state = 'pending' OR NEW.state = 'deleted' OR NEW.state = 'dead'))
        OR (OLD.state = 'deleted' AND (NEW.state = 'pending' OR NEW.state = 'dead'))
        OR (NEW.state = 'pending' AND (OLD.state = 'held' OR OLD.state = 'dead'))))
    EXECUTE FUNCTION forgetd_refuse('work_items: illegal state transition');

CREATE TABLE request_items (
    request_id bigint NOT NULL REFERENCES erasure_requests (id),
    item_id    bigint NOT NULL REFERENCES work_items (id),
    PRIMARY KEY (request_id, item_id)
);
CREATE INDEX request_items_by_item ON request_items (item_id);

CREATE TABLE batches (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    provider     text COLLATE "C" NOT NULL,
    scope        text COLLATE "C" NOT NULL,
    size         bigint NOT NULL,
    claimed_ms   bigint NOT NULL,
    answered_ms  bigint,
    outcome      text
);

CREATE TABLE rules (
    name           text COLLATE "C" PRIMARY KEY
        CONSTRAINT "rules_name_must_be_1_to_64_of_A_Z_a_z_0_9_dot_underscore_dash"
        CHECK (length(name) BETWEEN 1 AND 64 AND name !~ '[^A-Za-z0-9._-]'),
    provider       text COLLATE "C" NOT NULL
        CONSTRAINT rules_provider_must_be_a_provider_key CHECK (length(provider) BETWEEN 1 AND 32),
    scope          text COLLATE "C" NOT NULL
        CONSTRAINT rules_scope_must_be_1_to_64_chars CHECK (length(scope) BETWEEN 1 AND 64),
    max_age_secs   bigint NOT NULL
        CONSTRAINT rules_max_age_must_be_positive CHECK (max_age_secs > 0),
    schedule       text NOT NULL,
    timezone       text NOT NULL DEFAULT 'UTC',
    discover       bigint NOT NULL DEFAULT 0 CHECK (discover IN (0, 1)),
    max_deletions  bigint NOT NULL DEFAULT 10000
        CONSTRAINT rules_max_deletions_must_be_positive CHECK (max_deletions > 0),
    origin         text COLLATE "C" NOT NULL
        CONSTRAINT rules_origin_must_be_config_or_cli CHECK (origin IN ('config', 'cli')),
    created_at     bigint NOT NULL DEFAULT unixepoch(),
    updated_at     bigint NOT NULL DEFAULT unixepoch()
);

CREATE TABLE rule_state (
    rule_name            text COLLATE "C" PRIMARY KEY,
    last_run_at          bigint,
    running_since        bigint,
    -- set when a run matched more than max_deletions; cleared by `rules approve` or a config change
    awaiting_approval    bigint,
    approved             bigint NOT NULL DEFAULT 0 CHECK (approved IN (0, 1)),
    awaiting_matched     bigint,
    approved_up_to       bigint
);

CREATE TABLE rule_runs (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    rule_name    text COLLATE "C" NOT NULL,
    started_at   bigint NOT NULL,
    finished_at  bigint,
    matched      bigint NOT NULL DEFAULT 0,
    enqueued     bigint NOT NULL DEFAULT 0,
    held         bigint NOT NULL DEFAULT 0,
    outcome      text
);
CREATE INDEX rule_runs_by_rule ON rule_runs (rule_name, id);

CREATE TABLE holds (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    subject     text COLLATE "C",
    provider    text COLLATE "C"
        CONSTRAINT holds_provider_must_be_null_or_a_provider_key
        CHECK (provider IS NULL OR length(provider) BETWEEN 1 AND 32),
    scope       text COLLATE "C",
    session_id  text COLLATE "C",
    reason      text NOT NULL
        CONSTRAINT holds_reason_must_not_be_blank CHECK (length(trim(reason)) > 0),
    created_at  bigint NOT NULL DEFAULT unixepoch(),
    removed_at  bigint,
    CONSTRAINT holds_cover_a_subject_or_one_chat
        CHECK ((subject IS NOT NULL AND length(trim(subject)) > 0
                AND provider IS NULL AND scope IS NULL AND session_id IS NULL)
            OR (subject IS NULL AND provider IS NOT NULL AND scope IS NOT NULL AND session_id IS NOT NULL))
);
CREATE INDEX holds_active_subject ON holds (subject) WHERE removed_at IS NULL AND subject IS NOT NULL;
CREATE INDEX holds_active_chat ON holds (provider, scope, session_id) WHERE removed_at IS NULL AND session_id IS NOT NULL;

CREATE TABLE provider_state (
    provider        text COLLATE "C" PRIMARY KEY,
    paused_reason   text,
    paused_at       bigint,
    next_probe_ms   bigint,
    probes          bigint NOT NULL DEFAULT 0,
    gate_state      text COLLATE "C"
        CONSTRAINT provider_state_gate_state_must_be_running_throttled_or_paused
        CHECK (gate_state IS NULL OR gate_state IN ('running', 'throttled', 'paused')),
    rate_per_s      double precision,
    rate_learned    bigint NOT NULL DEFAULT 0,
    concurrency     bigint,
    max_concurrency bigint,
    resume_at_ms    bigint,
    throttles       bigint NOT NULL DEFAULT 0,
    gate_updated_ms bigint
);

CREATE TABLE audit_log (
    seq         bigint PRIMARY KEY,
    at          bigint NOT NULL,
    kind        text COLLATE "C" NOT NULL,
    request_id  bigint,
    data        text NOT NULL,
    prev_hash   text COLLATE "C" NOT NULL,
    hash        text COLLATE "C" NOT NULL
);
CREATE INDEX audit_log_by_request ON audit_log (request_id) WHERE request_id IS NOT NULL;
CREATE TRIGGER audit_log_is_append_only_no_update
    BEFORE UPDATE ON audit_log FOR EACH ROW
    EXECUTE FUNCTION forgetd_refuse('audit_log is append-only: rows cannot be changed');
CREATE TRIGGER audit_log_is_append_only_no_delete
    BEFORE DELETE ON audit_log FOR EACH ROW
    EXECUTE FUNCTION forgetd_refuse('audit_log is append-only: rows cannot be deleted');
CREATE TRIGGER audit_log_is_append_only_no_truncate
    BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT
    EXECUTE FUNCTION forgetd_refuse('audit_log is append-only: rows cannot be deleted');

CREATE TABLE audit_seals (
    seq   bigint PRIMARY KEY REFERENCES audit_log (seq),
    seal  text COLLATE "C" NOT NULL
        CONSTRAINT audit_seals_seal_must_be_64_hex
        CHECK (length(seal) = 64 AND seal !~ '[^0-9a-f]'),
    late  bigint NOT NULL DEFAULT 0
        CONSTRAINT audit_seals_late_must_be_0_or_1 CHECK (late IN (0, 1))
);
CREATE TRIGGER audit_seals_are_append_only_no_update
    BEFORE UPDATE ON audit_seals FOR EACH ROW
    EXECUTE FUNCTION forgetd_refuse('audit_seals: seals are append-only');
CREATE TRIGGER audit_seals_are_append_only_no_delete
    BEFORE DELETE ON audit_seals FOR EACH ROW
    EXECUTE FUNCTION forgetd_refuse('audit_seals: seals are append-only');
CREATE TRIGGER audit_seals_are_append_only_no_truncate
    BEFORE TRUNCATE ON audit_seals FOR EACH STATEMENT
    EXECUTE FUNCTION forgetd_refuse('audit_seals: seals are append-only');

-- Its one row is written at open (src/store/pg/mod.rs), so `migrate-to` can carry a SQLite
-- chain's own first keyed link over before it.
CREATE TABLE audit_keying (
    id              bigint PRIMARY KEY CHECK (id = 1),
    keyed_from_seq  bigint NOT NULL
);
CREATE TRIGGER audit_keying_is_fixed_no_update
    BEFORE UPDATE ON audit_keying FOR EACH ROW
    EXECUTE FUNCTION forgetd_refuse('audit_keying: fixed at migration');
CREATE TRIGGER audit_keying_is_fixed_no_delete
    BEFORE DELETE ON audit_keying FOR EACH ROW
    EXECUTE FUNCTION forgetd_refuse('audit_keying: fixed at migration');
CREATE TRIGGER audit_keying_is_fixed_no_truncate
    BEFORE TRUNCATE ON audit_keying FOR EACH STATEMENT
    EXECUTE FUNCTION forgetd_refuse('audit_keying: fixed at migration');

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

-- Pickup without polling: a commit that files a request, places or lifts a hold, or changes a
-- rule tells every listening forgetd (one notification per statement; a rolled-back
-- transaction sends none). No trigger on `sessions`: a new chat needs nothing done at once, and
-- bulk feeders stay cheap.
CREATE FUNCTION forgetd_notify_intake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('forgetd_intake', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER erasure_requests_notify AFTER INSERT OR UPDATE ON erasure_requests
    FOR EACH STATEMENT EXECUTE FUNCTION forgetd_notify_intake();
CREATE TRIGGER holds_notify AFTER INSERT OR UPDATE OR DELETE ON holds
    FOR EACH STATEMENT EXECUTE FUNCTION forgetd_notify_intake();
CREATE TRIGGER rules_notify AFTER INSERT OR UPDATE OR DELETE ON rules
    FOR EACH STATEMENT EXECUTE FUNCTION forgetd_notify_intake();
CREATE TRIGGER rule_state_notify AFTER INSERT OR UPDATE OR DELETE ON rule_state
    FOR EACH STATEMENT EXECUTE FUNCTION forgetd_notify_intake();
