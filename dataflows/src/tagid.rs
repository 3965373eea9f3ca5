//! Tag identity: DECNET's tag uuid, bit for bit.
//!
//! `uuid5(uuid5(NAMESPACE_URL, "decnet:ttp_tag:v1"),
//! "source_kind|source_id|rule_id|rule_version|technique_id|sub_technique_id-or-empty")`.
//! Existing `ttp_tag` rows stay idempotent only if this never changes.

use uuid::Uuid;

/// `uuid5(NAMESPACE_URL, "decnet:ttp_tag:v1")`, spelled out so start-up does no hashing.
pub const TAG_NAMESPACE: Uuid = Uuid::from_u128(0x1ca31f08_5522_5aae_8371_fe81f0e39de3);

/// The uuid of the tag a rule emits for a subject.
pub fn tag_uuid(
    source_kind: &str,
    source_id: &str,
    rule_id: &str,
    rule_version: i64,
    technique_id: &str,
    sub_technique_id: Option<&str>,
) -> Uuid {
    let key =
        format!("{source_kind}|{source_id}|{rule_id}|{rule_version}|{technique_id}|{}", sub_technique_id.unwrap_or(""));
    Uuid::new_v5(&TAG_NAMESPACE, key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_derived_from_the_url_namespace() {
        assert_eq!(Uuid::new_v5(&Uuid::NAMESPACE_URL, b"decnet:ttp_tag:v1"), TAG_NAMESPACE);
    }

    /// Every vector of DECNET's conformance data (skipped with a message when absent).
    #[test]
    fn decnet_vectors() {
        let dir = std::env::var_os("TTPFLOW_CONFORMANCE_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"));
        let Ok(text) = std::fs::read_to_string(dir.join("golden/engine_vectors.json")) else {
            println!("skipping: conformance data not found at {}", dir.display());
            return;
        };
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let vectors = doc["tag_uuid"]["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 10);
        for v in vectors {
            let got = tag_uuid(
                v["source_kind"].as_str().unwrap(),
                v["source_id"].as_str().unwrap(),
                v["rule_id"].as_str().unwrap(),
                v["rule_version"].as_i64().unwrap(),
                v["technique_id"].as_str().unwrap(),
                v["sub_technique_id"].as_str().filter(|s| !s.is_empty()),
            );
            assert_eq!(got.to_string(), v["uuid"].as_str().unwrap(), "key {}", v["key"]);
        }
        assert_eq!(doc["tag_uuid"]["namespace"].as_str().unwrap(), TAG_NAMESPACE.to_string());
    }

    #[test]
    fn pinned_vector() {
        let u = tag_uuid("command", "cmd_42", "R0014", 2, "T1083", None);
        assert_eq!(u.to_string(), "9aa491e5-f03b-5d8f-9eb5-161becedcdd6");
    }
}
