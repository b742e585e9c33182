-- In step with the Postgres migration of the same name, which adds triggers
-- that notify every gateway of admin changes. SQLite serves one gateway and
-- has no notifications: its caches expire after `key_cache_ms` and
-- `settings_cache_ms` instead. Nothing to change in the schema.
SELECT 1;
