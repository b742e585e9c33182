-- Per-policy hedging and cascade (both off when NULL): the margin in ms
-- past an edge worker's predicted first byte after which the same request
-- also starts in the cloud, and the mean token log-probability below which
-- an edge answer is asked of the cloud instead.
ALTER TABLE routing_policies ADD COLUMN hedge_margin_ms DOUBLE PRECISION;
ALTER TABLE routing_policies ADD COLUMN cascade_min_logprob DOUBLE PRECISION;
