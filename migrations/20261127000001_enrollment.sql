-- Sign-up proves identity with a one-time code the registry mails out
-- (common/src/auth/enrollment.rs). One live code per citizen: issuing a
-- new one replaces the old, and the sign-up that uses it deletes it.
-- code_hash: HMAC-SHA256(auth.enrollment_key, citizen id ‖ code); the code
--   itself is never stored.
CREATE TABLE enrollment_codes (
    citizen_id BIGINT      PRIMARY KEY,
    code_hash  BYTEA       NOT NULL,
    issued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT enrollment_codes_citizen_fkey FOREIGN KEY (citizen_id)
        REFERENCES citizens (citizen_id) ON DELETE CASCADE,
    CONSTRAINT enrollment_codes_hash_length CHECK (octet_length(code_hash) = 32)
);

-- enrolled_at: when the account proved its citizen with a code. NULL marks
-- an account made before codes existed, which anyone could have made: it
-- cannot log in until its citizen signs up again with a code. Accounts
-- made from here on are enrolled when created.
ALTER TABLE users ADD COLUMN enrolled_at TIMESTAMPTZ;
ALTER TABLE users ALTER COLUMN enrolled_at SET DEFAULT now();

-- Their sessions end now.
UPDATE sessions SET revoked_at = now()
WHERE revoked_at IS NULL
  AND citizen_id IN (SELECT citizen_id FROM users WHERE enrolled_at IS NULL);
