-- Rule state (DESIGN §1.3): per rule id, enabled, disabled, or clipped to confidence_max,
-- until expires_at. The job reads the table at epoch boundaries and applies a change live,
-- as it would a state file's (see read_rule_states in src/postgres.rs).
CREATE TABLE ttp_rule_state (
    rule_id text PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('enabled', 'disabled', 'clipped')),
    confidence_max double precision,
    expires_at timestamptz,
    reason text,
    set_by text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
