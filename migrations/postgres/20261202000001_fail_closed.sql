-- Whether a tenant's requests may ask the upstream to store the exchange
-- (OpenAI's `store: true`). Off by default: the field is removed unless the
-- tenant allows it.
ALTER TABLE routing_policies ADD COLUMN allow_store BIGINT NOT NULL DEFAULT 0;

-- What a backend can honour beyond plain chat. A request with tools or a
-- JSON response format goes only to a backend that declares it. Edge
-- workers report theirs live; these are the declared values (cloud APIs
-- are assumed to support both unless the operator says otherwise).
ALTER TABLE backends ADD COLUMN supports_tools BIGINT NOT NULL DEFAULT 0;
ALTER TABLE backends ADD COLUMN supports_json_schema BIGINT NOT NULL DEFAULT 0;
UPDATE backends SET supports_tools = 1, supports_json_schema = 1 WHERE kind = 'cloud';
