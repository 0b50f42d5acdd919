-- PostgreSQL only, version 8: the sessions trigger reads `providers` by a fixed search path.
--
-- A trigger function runs with the inserting role's search_path, and a session's temporary
-- schema is searched first for tables. A feeder that may create temporary tables (PUBLIC may,
-- by default) could shadow `providers` with a table of its own and insert chats of a provider
-- forgetd does not serve: work that no lane would ever claim, a request that never completes.
-- Fixed to forgetd's own schema, with pg_temp last, the trigger reads forgetd's table.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION sessions_check() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END $$;
