-- The free-text search index of the read models (indexes.sql holds the others). Kept apart so a
-- replay can build it, the slowest index, on its own connection while the others are built.
-- Free-text search over type, parameters and result (ILIKE '%...%'): a trigram index when the
-- pg_trgm extension is available (it ships with Postgres' contrib; trusted since Postgres 13).
-- The expression must stay identical to SEARCH_EXPRESSION in services/api/readmodels.py.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN others THEN
    RAISE NOTICE 'pg_trgm is not available; job search works without an index';
END $$;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX IF NOT EXISTS jobs_search_idx ON {schema}.jobs USING gin '
            '((job_type || '' '' || parameters::text || '' '' || coalesce(result::text, '''')) '
            'gin_trgm_ops)';
        -- The batch search: BATCH_SEARCH_EXPRESSION in services/api/batch_readmodels.py.
        EXECUTE 'CREATE INDEX IF NOT EXISTS batches_search_idx ON {schema}.batches USING gin '
            '((coalesce(name, '''') || '' '' || id) gin_trgm_ops)';
    END IF;
END $$;
