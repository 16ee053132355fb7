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
-- Batches and attempts (issue 13). Added to existing databases here, before anything reads them.
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS batch_index integer;
-- A restart is a new job: ``attempt`` counts from 1, ``attempt_of`` names the first attempt
-- (NULL for it), and only the newest attempt of a job is ``latest`` (a batch counts those).
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 1;
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS attempt_of text;
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS latest boolean NOT NULL DEFAULT true;
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS superseded_by text;
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS archived boolean NOT NULL DEFAULT false;
-- Two indexes the projector itself reads while it writes (so they exist during a replay's bulk
-- load too, unlike those of indexes.sql): a batch's jobs, counted for its counters and listed in
-- batch order, and the attempts of a job. Partial: a job outside a batch, or a first attempt,
-- costs nothing to insert.
-- (A job of a batch without a place, published by hand, sorts first: keyset pages need no NULL.)
CREATE INDEX IF NOT EXISTS jobs_batch_place_idx
    ON {schema}.jobs (batch_id, (coalesce(batch_index, -1)), attempt, id)
    WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_attempt_of_idx ON {schema}.jobs (attempt_of)
    WHERE attempt_of IS NOT NULL;

-- One row per batch. The counters count the latest attempt of each job of the batch and are
-- recounted (with status, progress and times) in the transaction that changes any of them, so
-- they are exact at every checkpoint and identical after a replay. A batch event may come before
-- its BatchRequested (a job's events may come before any batch event): its row is then created
-- from what that event says and completed when BatchRequested arrives.
CREATE TABLE IF NOT EXISTS {schema}.batches (
    id               text PRIMARY KEY,
    name             text,
    requested_by     text,
    job_types        text[] NOT NULL DEFAULT '{{}}',
    status           text NOT NULL DEFAULT 'pending',
    sealed           boolean NOT NULL DEFAULT false,
    total_jobs       integer NOT NULL DEFAULT 0,
    pending_jobs     integer NOT NULL DEFAULT 0,
    processing_jobs  integer NOT NULL DEFAULT 0,
    completed_jobs   integer NOT NULL DEFAULT 0,
    failed_jobs      integer NOT NULL DEFAULT 0,
    cancelled_jobs   integer NOT NULL DEFAULT 0,
    progress_percent double precision NOT NULL DEFAULT 0,
    archived         boolean NOT NULL DEFAULT false,
    failed_reason    text,     -- set by BatchFailed, cleared by a later BatchRestarted
    failed_by        text,
    failed_at        timestamptz,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,  -- the first job of the batch running (any attempt)
    finished_at      timestamptz,  -- every latest attempt ended, or BatchFailed
    updated_at       timestamptz NOT NULL,
    first_seq        bigint NOT NULL,  -- stream sequence of the first event that made the row
    last_seq         bigint NOT NULL   -- stream sequence of the last event that changed it
);
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

-- Every webhook attempt of a job (WebhookAttempted): the job's delivery log. A delivery's state is
-- its last attempt's outcome (retrying, delivered, failed).
CREATE TABLE IF NOT EXISTS {schema}.webhook_deliveries (
    job_id        text NOT NULL,
    delivery_id   text NOT NULL,
    attempt       integer NOT NULL,
    webhook_index integer NOT NULL,
    url           text NOT NULL,
    outcome       text NOT NULL,
    status_code   integer,
    error_code    text,
    error_message text,
    duration_ms   double precision,
    attempted_at  timestamptz NOT NULL,
    stream_seq    bigint NOT NULL,
    PRIMARY KEY (job_id, delivery_id, attempt)
);

-- A job's artifacts (ArtifactStored): the files are in the artifacts object store under
-- object_name; this table says which there are.
CREATE TABLE IF NOT EXISTS {schema}.artifacts (
    job_id       text NOT NULL,
    name         text NOT NULL,
    size         bigint NOT NULL,
    content_type text NOT NULL,
    sha256       text NOT NULL,
    object_name  text NOT NULL,
    stored_at    timestamptz NOT NULL,
    stream_seq   bigint NOT NULL,
    PRIMARY KEY (job_id, name)
);

-- The last applied stream sequence, written in the same transaction as the rows above.
CREATE TABLE IF NOT EXISTS {schema}.checkpoint (
    id       integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_seq bigint NOT NULL
);
INSERT INTO {schema}.checkpoint (id, last_seq) VALUES (1, 0) ON CONFLICT DO NOTHING;

-- Events the projector could not apply (invariant 9): each is recorded here, the checkpoint moves
-- past it and the projector goes on; GET /health says "degraded" while this table is not empty.
-- A replay sets the same events aside. raw is the stored message, cut to a few KiB.
CREATE TABLE IF NOT EXISTS {schema}.projector_failures (
    stream_seq  bigint PRIMARY KEY,
    subject     text,
    event_type  text,
    job_id      text,
    error       text NOT NULL,
    raw         text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
