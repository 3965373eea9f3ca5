-- Job progress: per input and partition, the next offset to read. Written in the same
-- transaction as the tags of the epoch it covers (see src/postgres.rs).
CREATE TABLE ttp_progress (
    input text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (input, partition)
);

-- The job's settings that give the stored progress its meaning: the epoch size of the run
-- that last committed.
CREATE TABLE ttp_job (
    job text PRIMARY KEY,
    epoch_records bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
