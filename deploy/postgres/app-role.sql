-- The role Tally's serving processes connect as, apart from the role that
-- owns the schema (the one `tally migrate` connects as). Run once, as the
-- owner, in Tally's database:
--   psql -v ON_ERROR_STOP=1 -v app_password="$APP_PASSWORD" -f app-role.sql
-- The application role reads and writes rows and does nothing else: no
-- TRUNCATE (which fires no row trigger), no DDL, so it can neither empty
-- the audit log nor switch off the trigger that keeps it append-only.
CREATE ROLE tally_app LOGIN PASSWORD :'app_password';
GRANT USAGE ON SCHEMA public TO tally_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tally_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO tally_app;
-- Tables and sequences later migrations create get the same.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO tally_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO tally_app;
