-- Read models. Everything here can be dropped and rebuilt from the event stream.
-- {schema} is replaced by the schema name (the live one, or a fresh one during a replay).
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.jobs (
    id               text PRIMARY KEY,
    job_type         text NOT NULL,
    status           text NOT NULL,
    parameters       jsonb NOT NULL DEFAULT '{{}}',
    lock             text,
    requested_by     text,
    cancelled_by     text,
    batch_id         text,
    runner_id        text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL,
    cancel_requested_at timestamptz,
    exit_code        integer,
    error_code       text,
    error_message    text,
    result           jsonb,
    log_count        integer NOT NULL DEFAULT 0,
    progress_current integer,
    progress_total   integer,
    progress_percent double precision,
    phase            text,
    message          text,
    first_seq        bigint NOT NULL,  -- stream sequence of the job's JobRequested
    last_seq         bigint NOT NULL   -- stream sequence of the job's latest event
);
CREATE INDEX IF NOT EXISTS jobs_created_idx ON {schema}.jobs (created_at DESC, id DESC);
-- Superseded by the *_page_idx indexes below (they also carry the id tie-breaker).
DROP INDEX IF EXISTS {schema}.jobs_status_idx;
DROP INDEX IF EXISTS {schema}.jobs_type_idx;
CREATE INDEX IF NOT EXISTS jobs_lock_active_idx ON {schema}.jobs (lock)
    WHERE status IN ('pending', 'running');
-- History filters (GET /api/jobs): keyset pagination on (created_at, id), newest first.
CREATE INDEX IF NOT EXISTS jobs_status_page_idx ON {schema}.jobs (status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_type_page_idx ON {schema}.jobs (job_type, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_batch_idx ON {schema}.jobs (batch_id, created_at DESC, id DESC)
    WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON {schema}.jobs (finished_at)
    WHERE finished_at IS NOT NULL;
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
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS {schema}.log_lines (
    job_id     text NOT NULL,
    seq        integer NOT NULL,
    stream     text NOT NULL,
    level      text NOT NULL,
    ts         timestamptz NOT NULL,
    text       text NOT NULL,
    stream_seq bigint NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- The last applied stream sequence, written in the same transaction as the rows above.
CREATE TABLE IF NOT EXISTS {schema}.checkpoint (
    id       integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_seq bigint NOT NULL
);
INSERT INTO {schema}.checkpoint (id, last_seq) VALUES (1, 0) ON CONFLICT DO NOTHING;
