-- Whether the requester could pay a request's images upfront when it was accepted (workers with
-- require_upfront_kudos take only those).
ALTER TABLE requests ADD COLUMN can_pay_upfront INTEGER NOT NULL DEFAULT 0;
