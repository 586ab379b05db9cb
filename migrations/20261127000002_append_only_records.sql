-- The audit log was append-only for UPDATE and DELETE, row by row; TRUNCATE
-- fires no row trigger, so it could still empty the log in one statement.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- A copy of a recorded ballot that reached the stream after the close was
-- noted as rejected under the same receipt. Workers no longer do that; the
-- receipt of a recorded ballot reads recorded, and nothing else.
DELETE FROM rejected_ballots r USING recorded_receipts c WHERE r.receipt = c.receipt;
