-- Ballot secrecy against insiders (docs/architecture.md, "Ballot secrecy").
--
-- Workers commit ballots in groups of at least `anonymity_set` (K), so a
-- transaction id shared by voter-roll and ballot-box rows narrows a voter's
-- choice only to their group.
ALTER TABLE elections ADD COLUMN anonymity_set INTEGER NOT NULL DEFAULT 20;
ALTER TABLE elections ADD CONSTRAINT elections_anonymity_set_check CHECK (anonymity_set BETWEEN 2 AND 10000);

-- Receipts leave the ballot box: a receipt shown to a coercer must not lead
-- to one ballot row. Recorded receipts are kept beside it, unlinked.
CREATE TABLE recorded_receipts (
    receipt     UUID   PRIMARY KEY,
    election_id BIGINT NOT NULL,
    CONSTRAINT recorded_receipts_election_fkey FOREIGN KEY (election_id)
        REFERENCES elections (election_id) ON DELETE RESTRICT
);
CREATE INDEX recorded_receipts_election_idx ON recorded_receipts (election_id);

-- Rows recorded before this change were committed in batches that could
-- hold one ballot. Both tables are rebuilt in this one transaction, rows in
-- an order unrelated to the old one, so the old pairing by transaction id
-- or physical order is gone from the tables (not from old WAL or backups).
INSERT INTO recorded_receipts (receipt, election_id)
    SELECT receipt, election_id FROM ballot_box ORDER BY receipt;

CREATE TABLE ballot_box_rebuilt (
    ballot_id   UUID     NOT NULL,
    election_id BIGINT   NOT NULL,
    selections  BIGINT[] NOT NULL
);
INSERT INTO ballot_box_rebuilt (ballot_id, election_id, selections)
    SELECT gen_random_uuid(), election_id, selections FROM ballot_box ORDER BY random();
DROP TABLE ballot_box;
ALTER TABLE ballot_box_rebuilt RENAME TO ballot_box;
ALTER TABLE ballot_box ADD CONSTRAINT ballot_box_pkey PRIMARY KEY (ballot_id);
ALTER TABLE ballot_box ADD CONSTRAINT ballot_box_election_fkey FOREIGN KEY (election_id)
    REFERENCES elections (election_id) ON DELETE RESTRICT;
ALTER TABLE ballot_box ADD CONSTRAINT ballot_box_selections_nonempty CHECK (cardinality(selections) >= 1);
CREATE INDEX ballot_box_election_idx ON ballot_box (election_id);

CREATE TABLE voter_roll_rebuilt (
    election_id BIGINT NOT NULL,
    citizen_id  BIGINT NOT NULL
);
INSERT INTO voter_roll_rebuilt SELECT election_id, citizen_id FROM voter_roll ORDER BY election_id, citizen_id;
DROP TABLE voter_roll;
ALTER TABLE voter_roll_rebuilt RENAME TO voter_roll;
ALTER TABLE voter_roll ADD CONSTRAINT voter_roll_pkey PRIMARY KEY (election_id, citizen_id);
ALTER TABLE voter_roll ADD CONSTRAINT voter_roll_election_fkey FOREIGN KEY (election_id)
    REFERENCES elections (election_id) ON DELETE RESTRICT;
ALTER TABLE voter_roll ADD CONSTRAINT voter_roll_citizen_fkey FOREIGN KEY (citizen_id)
    REFERENCES citizens (citizen_id) ON DELETE RESTRICT;

-- A sealed ballot's size is the same for every ballot of an election, but
-- a message that failed to open may be anything: its size is not kept.
ALTER TABLE dead_letters DROP COLUMN payload_size;
