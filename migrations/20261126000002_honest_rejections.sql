-- Reasons a voter can now read on a rejected receipt (docs/api.md):
-- not_registered: the voter left the registry while the ballot waited;
-- unrecordable: Postgres refused the ballot's data;
-- unreadable: an operator rejected a quarantined ballot no worker opens.
ALTER TABLE rejected_ballots DROP CONSTRAINT rejected_ballots_reason_check;
ALTER TABLE rejected_ballots ADD CONSTRAINT rejected_ballots_reason_check CHECK (
    reason IN ('already_voted', 'election_closed', 'invalid_selection', 'unknown_election',
               'not_registered', 'unrecordable', 'unreadable'));
