-- Secondary indexes of the read models (schema.sql holds the tables and their primary keys).
-- A replay creates them after loading its fresh tables: building an index once is far cheaper
-- than keeping it up to date through a million inserts.
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
-- Batch lists (GET /api/batches): keyset pagination on (created_at, id), newest first; most lists
-- leave archived batches out.
CREATE INDEX IF NOT EXISTS batches_page_idx ON {schema}.batches (archived, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS batches_status_page_idx
    ON {schema}.batches (status, archived, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS batches_requester_idx
    ON {schema}.batches (requested_by, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS batches_job_types_idx ON {schema}.batches USING gin (job_types);
