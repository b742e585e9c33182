-- Placement: the queue wait routing predicted on the backend that served,
-- and the wait the edge worker measured (its x-queue-ms; NULL for cloud
-- backends).
ALTER TABLE request_ledger ADD COLUMN predicted_wait_ms REAL;
ALTER TABLE request_ledger ADD COLUMN actual_wait_ms REAL;

-- The all-cloud counterfactual: the cloud backend this request would have
-- gone to had every request gone to the cloud (privacy aside), and its
-- predicted latency, energy (J, the backend's configured joules per token)
-- and cost (USD) for the request's tokens. Savings against all-cloud are
-- sums of allcloud_* minus the actual latency_ms, joules and usd; NULL when
-- no cloud backend serves the model or the request was not served.
ALTER TABLE request_ledger ADD COLUMN allcloud_backend TEXT;
ALTER TABLE request_ledger ADD COLUMN allcloud_latency_ms REAL;
ALTER TABLE request_ledger ADD COLUMN allcloud_joules REAL;
ALTER TABLE request_ledger ADD COLUMN allcloud_usd REAL;
