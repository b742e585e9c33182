-- Whether a row's token counts (and the cost and energy derived from them)
-- are the gateway's estimates rather than the upstream's reported usage:
-- set for answers that ended before their usage arrived (cancelled by the
-- client, broken off mid-stream).
ALTER TABLE request_ledger ADD COLUMN usage_estimated BIGINT NOT NULL DEFAULT 0;
