-- The election record (docs/record.md): built once, when an election is
-- final, and never changed. One row per election says it exists; its
-- files (election.json, ballots-<n>.csv, receipts.txt, totals.json,
-- audit.jsonl, checkpoint, MANIFEST) are stored as they are served.
CREATE TABLE election_records (
    election_id BIGINT      PRIMARY KEY,
    built_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT election_records_election_fkey FOREIGN KEY (election_id)
        REFERENCES elections (election_id) ON DELETE RESTRICT
);

CREATE TABLE election_record_files (
    election_id BIGINT NOT NULL,
    name        TEXT   NOT NULL,
    contents    BYTEA  NOT NULL,
    CONSTRAINT election_record_files_pkey PRIMARY KEY (election_id, name),
    CONSTRAINT election_record_files_record_fkey FOREIGN KEY (election_id)
        REFERENCES election_records (election_id) ON DELETE RESTRICT,
    CONSTRAINT election_record_files_name_check CHECK (
        name ~ '^(election\.json|receipts\.txt|totals\.json|audit\.jsonl|checkpoint|MANIFEST|ballots-[1-9][0-9]*\.csv)$')
);

-- A published record is signed: changing it afterwards would only make
-- its signatures fail, so the database refuses to.
CREATE FUNCTION election_record_is_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'election records are immutable';
END;
$$;
CREATE TRIGGER election_records_no_update BEFORE UPDATE OR DELETE ON election_records
    FOR EACH ROW EXECUTE FUNCTION election_record_is_immutable();
CREATE TRIGGER election_records_no_truncate BEFORE TRUNCATE ON election_records
    FOR EACH STATEMENT EXECUTE FUNCTION election_record_is_immutable();
CREATE TRIGGER election_record_files_no_update BEFORE UPDATE OR DELETE ON election_record_files
    FOR EACH ROW EXECUTE FUNCTION election_record_is_immutable();
CREATE TRIGGER election_record_files_no_truncate BEFORE TRUNCATE ON election_record_files
    FOR EACH STATEMENT EXECUTE FUNCTION election_record_is_immutable();
