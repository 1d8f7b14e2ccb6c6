-- Every kudos movement, append-only. Each posting group sums to zero: the horde itself is the
-- account `-1` (it grants starting kudos and keeps the burn, the part of a requester's charge
-- that is not the worker's reward). A user's balance (users.kudos) equals the sum of their rows
-- outside escrow; their kudos held in escrow (users.evaluating_kudos: half the earnings of
-- untrusted owners) the sum of their escrow rows.

CREATE TABLE kudos_ledger (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    account INTEGER NOT NULL,
    amount REAL NOT NULL,
    kind TEXT NOT NULL,
    counterparty INTEGER,
    request_id TEXT,
    job_id TEXT,
    escrow INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX kudos_ledger_by_account ON kudos_ledger(account, id);

ALTER TABLE users ADD COLUMN evaluating_kudos REAL NOT NULL DEFAULT 0;
-- Uptime (seconds) already paid for with uptime kudos.
ALTER TABLE workers ADD COLUMN uptime_rewarded INTEGER NOT NULL DEFAULT 0;
