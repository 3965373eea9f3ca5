-- Stored tags: DECNET's ttp_tag columns plus observed_at (the event time of the record).
-- Insert-only: rows are written with ON CONFLICT (uuid) DO NOTHING and never updated.
CREATE TABLE ttp_tag (
    uuid uuid PRIMARY KEY,
    source_kind text NOT NULL,
    source_id text NOT NULL,
    attacker_uuid text,
    identity_uuid text,
    session_id text,
    decky_id text,
    tactic text NOT NULL,
    technique_id text NOT NULL,
    sub_technique_id text,
    confidence double precision NOT NULL,
    rule_id text NOT NULL,
    rule_version integer NOT NULL,
    evidence jsonb NOT NULL,
    attack_release text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    observed_at timestamptz
);

-- The API's lookups: by attacker, identity and session, by technique, by rule.
CREATE INDEX ttp_tag_attacker_idx ON ttp_tag (attacker_uuid, observed_at);
CREATE INDEX ttp_tag_identity_idx ON ttp_tag (identity_uuid, observed_at);
CREATE INDEX ttp_tag_session_idx ON ttp_tag (session_id);
CREATE INDEX ttp_tag_technique_idx ON ttp_tag (technique_id, sub_technique_id);
CREATE INDEX ttp_tag_rule_idx ON ttp_tag (rule_id, rule_version);
