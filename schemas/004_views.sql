-- Dashboard views shaped like the rows of DECNET's /api/v1/ttp/* endpoints: the same
-- column names where they map (`count` is tag_count, `sub_technique_id` is null for
-- none), plus the scope's id and the numbers DECNET does not compute. DECNET's
-- `technique_name` / `sub_technique_name` come from its ATT&CK catalogue and have no
-- column here; `mitre_url` is derived from the ids. One row per (technique,
-- sub-technique, tactic): a technique seen under two tactics has two rows.

-- The canonical attack.mitre.org page of a technique or sub-technique.
CREATE FUNCTION ttp_mitre_url(technique_id text, sub_technique_id text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 'https://attack.mitre.org/techniques/'
        || replace(coalesce(nullif(sub_technique_id, ''), technique_id), '.', '/') || '/' $$;

-- GET /ttp/by-identity/{uuid}: the canonical identity's techniques (its attackers' tags
-- and the tags anchored on it or on identities merged into it).
CREATE VIEW ttp_techniques_by_identity AS
SELECT scope_id AS identity_uuid, technique_id, nullif(sub_technique_id, '') AS sub_technique_id, tactic,
       tag_count AS count, first_seen, last_seen, confidence_max, attacker_count,
       ttp_mitre_url(technique_id, sub_technique_id) AS mitre_url
FROM ttp_rollup WHERE scope_kind = 'identity';

-- GET /ttp/by-attacker/{uuid}: the techniques of the tags anchored on one attacker.
CREATE VIEW ttp_techniques_by_attacker AS
SELECT scope_id AS attacker_uuid, technique_id, nullif(sub_technique_id, '') AS sub_technique_id, tactic,
       tag_count AS count, first_seen, last_seen, confidence_max,
       ttp_mitre_url(technique_id, sub_technique_id) AS mitre_url
FROM ttp_rollup WHERE scope_kind = 'attacker';

-- GET /ttp/by-session/{sid}: the techniques of one session's tags.
CREATE VIEW ttp_techniques_by_session AS
SELECT scope_id AS session_id, technique_id, nullif(sub_technique_id, '') AS sub_technique_id, tactic,
       tag_count AS count, first_seen, last_seen, confidence_max, attacker_count, identity_count,
       ttp_mitre_url(technique_id, sub_technique_id) AS mitre_url
FROM ttp_rollup WHERE scope_kind = 'session';

-- GET /ttp/by-campaign/{uuid}: the canonical campaign's techniques, attacker-anchored
-- tags included; `identity_count` counts canonical identities.
CREATE VIEW ttp_techniques_by_campaign AS
SELECT scope_id AS campaign_id, technique_id, nullif(sub_technique_id, '') AS sub_technique_id, tactic,
       tag_count AS count, identity_count, last_seen, first_seen, confidence_max, attacker_count,
       ttp_mitre_url(technique_id, sub_technique_id) AS mitre_url
FROM ttp_rollup WHERE scope_kind = 'campaign';

-- GET /ttp/techniques: the fleet's techniques.
CREATE VIEW ttp_techniques_fleet AS
SELECT technique_id, nullif(sub_technique_id, '') AS sub_technique_id, tactic,
       tag_count AS count, last_seen, first_seen, confidence_max, attacker_count, identity_count,
       ttp_mitre_url(technique_id, sub_technique_id) AS mitre_url
FROM ttp_rollup WHERE scope_kind = 'fleet';

-- GET /ttp/tags/by-{scope}/{uuid}/{technique_id}: the stored tags behind a rollup row,
-- with the rule, the source and the evidence ("why was this tagged"). Filter on
-- attacker_uuid, identity_uuid (as the event carried it) or session_id and on the
-- technique; order by observed_at or created_at.
CREATE VIEW ttp_tag_details AS
SELECT uuid::text AS uuid, source_kind, source_id, attacker_uuid, identity_uuid, session_id, decky_id, tactic,
       technique_id, sub_technique_id, confidence, rule_id, rule_version, evidence, attack_release, created_at,
       ttp_mitre_url(technique_id, sub_technique_id) AS mitre_url, observed_at
FROM ttp_tag;
