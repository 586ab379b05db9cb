-- Tally's schema. Deviations from the seed are explained in docs/schema.md.
-- Constraint names are spelled out because the code maps violations to
-- client errors by name.

-- The mock national registry. Ids are BIGINT: a country outgrows INTEGER.
CREATE TABLE citizens (
    citizen_id        BIGINT PRIMARY KEY,
    full_name         TEXT   NOT NULL,
    dob               DATE   NOT NULL,
    pob               TEXT   NOT NULL,
    permanent_address TEXT   NOT NULL,
    province          TEXT   NOT NULL,
    CONSTRAINT citizens_id_positive CHECK (citizen_id > 0),
    CONSTRAINT citizens_full_name_length CHECK (char_length(full_name) BETWEEN 1 AND 255),
    CONSTRAINT citizens_pob_length CHECK (char_length(pob) BETWEEN 1 AND 255),
    CONSTRAINT citizens_address_length CHECK (char_length(permanent_address) BETWEEN 1 AND 255),
    CONSTRAINT citizens_province_format CHECK (province ~ '^[A-Z][A-Za-z -]{0,63}$')
);

CREATE INDEX citizens_province_idx ON citizens (province);

CREATE TABLE users (
    citizen_id    BIGINT      NOT NULL,
    password_hash TEXT        NOT NULL,
    phone         TEXT        NOT NULL,
    role          TEXT        NOT NULL DEFAULT 'voter',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_pkey PRIMARY KEY (citizen_id),
    CONSTRAINT users_citizen_fkey FOREIGN KEY (citizen_id)
        REFERENCES citizens (citizen_id) ON DELETE CASCADE,
    CONSTRAINT users_phone_key UNIQUE (phone),
    CONSTRAINT users_phone_e164 CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    CONSTRAINT users_role_check CHECK (role IN ('voter', 'admin')),
    CONSTRAINT users_hash_is_phc CHECK (password_hash LIKE '$argon2id$%')
);

-- A login session. Access tokens name it (`sid`), so revoking it revokes
-- them; refresh tokens are stored only as SHA-256 hashes.
CREATE TABLE sessions (
    session_id   UUID        PRIMARY KEY,
    citizen_id   BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ,
    CONSTRAINT sessions_user_fkey FOREIGN KEY (citizen_id)
        REFERENCES users (citizen_id) ON DELETE CASCADE
);
CREATE INDEX sessions_citizen_idx ON sessions (citizen_id) WHERE revoked_at IS NULL;

-- Every refresh token ever issued for a session. A token presented after it
-- was rotated is proof of theft: the whole session is revoked.
CREATE TABLE refresh_tokens (
    token_hash  BYTEA       PRIMARY KEY,
    session_id  UUID        NOT NULL,
    issued_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at  TIMESTAMPTZ,
    CONSTRAINT refresh_tokens_session_fkey FOREIGN KEY (session_id)
        REFERENCES sessions (session_id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

-- No self-referencing key (the seed's was a typo). The lifecycle status is
-- not stored: it is computed from these times and flags in one place.
CREATE TABLE elections (
    election_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               TEXT        NOT NULL,
    start_at           TIMESTAMPTZ NOT NULL,
    end_at             TIMESTAMPTZ NOT NULL,
    vote_restriction   TEXT        NOT NULL DEFAULT '@everyone',
    min_age            SMALLINT    NOT NULL DEFAULT 18,
    results_visibility TEXT        NOT NULL DEFAULT 'live',
    closed_at          TIMESTAMPTZ,
    cancelled_at       TIMESTAMPTZ,
    -- Raised by every worker batch that changes this election's counts;
    -- Redis and viewers only ever move to a higher version.
    tally_version      BIGINT      NOT NULL DEFAULT 0,
    turnout            BIGINT      NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT elections_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT elections_window_check CHECK (end_at > start_at),
    CONSTRAINT elections_restriction_check CHECK (
        vote_restriction IN ('@everyone', '@federal')
        OR vote_restriction ~ '^@provincial:[A-Z][A-Za-z -]{0,63}$'),
    CONSTRAINT elections_min_age_check CHECK (min_age BETWEEN 0 AND 150),
    CONSTRAINT elections_visibility_check CHECK (
        results_visibility IN ('live', 'turnout_only', 'after_close')),
    CONSTRAINT elections_turnout_check CHECK (turnout >= 0)
);
CREATE INDEX elections_window_idx ON elections (start_at, end_at);

CREATE TABLE runners (
    election_id BIGINT NOT NULL,
    citizen_id  BIGINT NOT NULL,
    post        TEXT   NOT NULL,
    total_votes BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT runners_pkey PRIMARY KEY (election_id, citizen_id),
    CONSTRAINT runners_election_fkey FOREIGN KEY (election_id)
        REFERENCES elections (election_id) ON DELETE CASCADE,
    CONSTRAINT runners_citizen_fkey FOREIGN KEY (citizen_id)
        REFERENCES citizens (citizen_id) ON DELETE CASCADE,
    CONSTRAINT runners_post_length CHECK (char_length(post) BETWEEN 1 AND 100),
    CONSTRAINT runners_votes_check CHECK (total_votes >= 0)
);

-- Who voted: one row per citizen per election, nothing about the choice.
-- The primary key is what makes "one vote per citizen" true under any
-- number of concurrent workers and redeliveries.
CREATE TABLE voter_roll (
    election_id BIGINT NOT NULL,
    citizen_id  BIGINT NOT NULL,
    CONSTRAINT voter_roll_pkey PRIMARY KEY (election_id, citizen_id),
    CONSTRAINT voter_roll_election_fkey FOREIGN KEY (election_id)
        REFERENCES elections (election_id) ON DELETE RESTRICT,
    CONSTRAINT voter_roll_citizen_fkey FOREIGN KEY (citizen_id)
        REFERENCES citizens (citizen_id) ON DELETE RESTRICT
);

-- What was voted: one row per recorded ballot, keyed by the voter's random
-- receipt. No citizen id and no precise time, so it cannot be joined back
-- to the voter roll (see docs/architecture.md, "Ballot secrecy").
CREATE TABLE ballot_box (
    receipt     UUID     PRIMARY KEY,
    election_id BIGINT   NOT NULL,
    selections  BIGINT[] NOT NULL,
    CONSTRAINT ballot_box_election_fkey FOREIGN KEY (election_id)
        REFERENCES elections (election_id) ON DELETE RESTRICT,
    CONSTRAINT ballot_box_selections_nonempty CHECK (cardinality(selections) >= 1)
);
CREATE INDEX ballot_box_election_idx ON ballot_box (election_id);

-- Ballots the workers refused, by receipt, so the voter learns why.
CREATE TABLE rejected_ballots (
    receipt     UUID   PRIMARY KEY,
    election_id BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    CONSTRAINT rejected_ballots_reason_check CHECK (
        reason IN ('already_voted', 'election_closed', 'invalid_selection', 'unknown_election'))
);

-- Messages no worker could decode. The payload is not kept: it may hold a
-- citizen id next to a choice.
CREATE TABLE dead_letters (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject      TEXT        NOT NULL,
    payload_size INTEGER     NOT NULL,
    error        TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Append-only record of every administrative action.
CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- `citizen:<id>` for an admin over the API, `cli:<os user>` for the CLI.
    actor       TEXT        NOT NULL,
    action      TEXT        NOT NULL,
    election_id BIGINT,
    before      JSONB,
    after       JSONB,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_election_idx ON audit_log (election_id, id);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
