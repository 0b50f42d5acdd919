-- Version 8: discovery as its own stage of a request. A request is resolved at once to the chats
-- the inventory knows; each listing a provider can do for its subject (KooSearch by user_name,
-- one per application) is a row here, pending until it ends: done (its chats joined the request)
-- or failed (refused, unending, or failing past the retry policy), with the reason. A request
-- with a pending listing is not finished; one with a failed listing ends `failed`.
-- `lease_owner`/`lease_until` make one resolver list for a request on a shared queue.
CREATE TABLE request_discovery (
    request_id      INTEGER NOT NULL,
    provider        TEXT NOT NULL,
    scope           TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CONSTRAINT request_discovery_state_known
                    CHECK (state IN ('pending', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    first_failed_at INTEGER,
    next_at         INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    found           INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     INTEGER,
    finished_at     INTEGER,
    PRIMARY KEY (request_id, provider, scope)
);
CREATE INDEX request_discovery_due ON request_discovery (next_at) WHERE state = 'pending';
