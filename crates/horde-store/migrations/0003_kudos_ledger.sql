-- Every kudos movement, append-only. Each posting group sums to zero: the horde itself is the
-- account `-1` (it grants starting kudos and keeps the burn, the part of a requester's charge
-- that is not the worker's reward). A user's balance (users.kudos) equals the sum of their rows.

CREATE TABLE kudos_ledger (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    account INTEGER NOT NULL,
    amount REAL NOT NULL,
    kind TEXT NOT NULL,
    counterparty INTEGER,
    request_id TEXT,
    job_id TEXT
);
CREATE INDEX kudos_ledger_by_account ON kudos_ledger(account, id);
