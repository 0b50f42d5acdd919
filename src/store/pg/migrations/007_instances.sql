-- PostgreSQL only, version 7: several forgetd instances on one queue.
--
-- * Each running instance has a row, its heartbeat measured on the server's clock (hosts' clocks
--   never meet: leases and backoff stay on each instance's own clock, liveness on the server's).
-- * A batch names the instance that claimed it: an instance returns only its own expired leases,
--   and a rescuer returns a dead instance's.

-- Milliseconds now on the server's clock (the time of the call, not of the transaction).
CREATE FUNCTION forgetd_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE forgetd_instances (
    id            text COLLATE "C" PRIMARY KEY,
    host          text NOT NULL,
    pid           bigint NOT NULL,
    version       text NOT NULL,
    started_ms    bigint NOT NULL,
    heartbeat_ms  bigint NOT NULL,
    expires_ms    bigint NOT NULL
);

-- NULL: claimed by a single daemon before instances existed, or by `run --once` of this version.
ALTER TABLE batches ADD COLUMN instance_id text COLLATE "C";
CREATE INDEX batches_open_by_instance ON batches (instance_id) WHERE answered_ms IS NULL;
