-- Rollup rows: per scope and technique, the numbers of the stored tags (see README.md,
-- `rollups.jsonl`). Maintained from the dataflow's changes, epoch by epoch, in the
-- transaction of the epoch's tags (upserts and deletes; never recomputed from ttp_tag).
CREATE TABLE ttp_rollup (
    -- attacker | identity | campaign | session | fleet
    scope_kind text NOT NULL
        CHECK (scope_kind IN ('attacker', 'identity', 'campaign', 'session', 'fleet')),
    -- The attacker, canonical identity, canonical campaign or session; '' for the fleet.
    scope_id text NOT NULL,
    technique_id text NOT NULL,
    -- '' for none.
    sub_technique_id text NOT NULL,
    tactic text NOT NULL,
    tag_count bigint NOT NULL,
    -- Distinct attackers and canonical identities among the key's tags.
    attacker_count bigint NOT NULL,
    identity_count bigint NOT NULL,
    -- Least and greatest event time of the key's tags; null while none has one.
    first_seen timestamptz,
    last_seen timestamptz,
    confidence_max double precision NOT NULL,
    PRIMARY KEY (scope_kind, scope_id, technique_id, sub_technique_id, tactic)
);

-- The scopes that used a technique (the primary key serves the per-scope views).
CREATE INDEX ttp_rollup_technique_idx ON ttp_rollup (technique_id, sub_technique_id, scope_kind);
