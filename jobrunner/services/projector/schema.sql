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
