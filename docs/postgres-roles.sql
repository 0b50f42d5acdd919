-- forgetd on PostgreSQL: one role that owns the queue, one for feeders that can do what the
-- feeder contract allows and nothing more. tests/postgres.rs runs this file as it stands here.
--
-- Run it twice with psql, as a superuser (or a role with CREATEROLE and CREATEDB):
--
--   psql -X -v ON_ERROR_STOP=1 -v owner=forgetd -v feeder=forgetd_feeder -v db=forgetd \
--        -d postgres -f docs/postgres-roles.sql
--
-- 1. Before forgetd's first start: it creates the two roles (LOGIN, no password: give each one
--    with \password or use peer/cert authentication in pg_hba.conf) and the database, owned by
--    the owner role. forgetd then connects as the owner and creates its schema at its first open
--    (`forgetd --config ... status` is enough). It needs no superuser.
-- 2. After that first open: the same command again grants the feeder role its rights on the
--    tables forgetd created. Run it again after an upgrade of forgetd; it changes nothing that is
--    already right.
--
-- The feeder role may, as on SQLite:
--   sessions          read, INSERT of the contract's columns, DELETE (forgetting an inventory
--                     row by hand), and UPDATE of subject, repo_id and created_at (the checks
--                     and triggers still apply);
--   erasure_requests  read (state is how a feeder learns a request is done) and INSERT of
--                     subject, external_ref and received_at;
--   providers         read (the sessions trigger checks a row's provider against it).
-- Nothing else: not forgetd's own tables (work items, holds, rules, the audit trail), not the
-- state columns, and no DROP TRIGGER or TRUNCATE, which only a table's owner may run. On SQLite a
-- feeder with the file can do anything; on PostgreSQL the contract is enforced by the server.

\set ON_ERROR_STOP on
\if :{?owner}
\else
  \set owner forgetd
\endif
\if :{?feeder}
\else
  \set feeder forgetd_feeder
\endif
\if :{?db}
\else
  \set db forgetd
\endif

SELECT format('CREATE ROLE %I LOGIN', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'feeder')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'feeder') \gexec
SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8''', :'db', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec

-- Only the two roles connect; nobody else creates anything in the schema, and the feeder no
-- temporary tables either (it needs none).
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"feeder";

\connect :"db"
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- Before PostgreSQL 15 the schema `public` is the bootstrap superuser's, and the owner's right
-- to create in it came from PUBLIC alone.
GRANT CREATE ON SCHEMA public TO :"owner";
GRANT USAGE ON SCHEMA public TO :"feeder";

SELECT to_regclass('public.erasure_requests') IS NOT NULL AS schema_ready \gset
\if :schema_ready
  BEGIN;
  REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"feeder";
  REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"feeder";
  GRANT SELECT, DELETE ON sessions TO :"feeder";
  GRANT INSERT (provider, scope, session_id, subject, repo_id, created_at) ON sessions TO :"feeder";
  GRANT UPDATE (subject, repo_id, created_at) ON sessions TO :"feeder";
  GRANT SELECT ON erasure_requests TO :"feeder";
  GRANT INSERT (subject, external_ref, received_at) ON erasure_requests TO :"feeder";
  GRANT SELECT ON providers TO :"feeder";
  COMMIT;
  \echo granted :feeder its feeder rights in :db
\else
  \echo :db has no forgetd schema yet: start forgetd once (or run forgetd status) as :owner, then run this file again to grant :feeder its rights
\endif
