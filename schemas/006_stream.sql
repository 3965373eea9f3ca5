-- Several jobs may share a database (the file job and a Kafka job, say): progress is kept
-- per job. Rows written before this migration belong to the file job.
ALTER TABLE ttp_progress ADD COLUMN job text NOT NULL DEFAULT 'embedded';
ALTER TABLE ttp_progress DROP CONSTRAINT ttp_progress_pkey;
ALTER TABLE ttp_progress ADD PRIMARY KEY (job, input, partition);

-- Messages of committed epochs not yet known to be published: written in the epoch's
-- transaction, deleted once the producer has delivered them, published again after a
-- crash in between (at-least-once, with deterministic keys for consumers to dedupe).
CREATE TABLE ttp_outbox (
    id bigserial PRIMARY KEY,
    job text NOT NULL,
    topic text NOT NULL,
    key text NOT NULL,
    value bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ttp_outbox_job_idx ON ttp_outbox (job, id);
