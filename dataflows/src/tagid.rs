//! Tag identity: DECNET's tag uuid, bit for bit.
//!
//! `uuid5(uuid5(NAMESPACE_URL, "decnet:ttp_tag:v1"),
//! "source_kind|source_id|rule_id|rule_version|technique_id|sub_technique_id-or-empty")`.
//! Existing `ttp_tag` rows stay idempotent only if this never changes.

use uuid::Uuid;

/// `uuid5(NAMESPACE_URL, "decnet:ttp_tag:v1")`, spelled out so start-up does no hashing.
pub const TAG_NAMESPACE: Uuid = Uuid::from_u128(0x1ca31f08_5522_5aae_8371_fe81f0e39de3);

/// The uuid of the tag a rule emits for a subject.
pub fn tag_uuid(source_kind: &str, source_id: &str, rule_id: &str, rule_version: i64, technique_id: &str, sub_technique_id: Option<&str>) -> Uuid {
    let key = format!(
        "{source_kind}|{source_id}|{rule_id}|{rule_version}|{technique_id}|{}",
        sub_technique_id.unwrap_or("")
    );
    Uuid::new_v5(&TAG_NAMESPACE, key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_derived_from_the_url_namespace() {
        assert_eq!(Uuid::new_v5(&Uuid::NAMESPACE_URL, b"decnet:ttp_tag:v1"), TAG_NAMESPACE);
    }

    #[test]
    fn pinned_vector() {
        let u = tag_uuid("command", "cmd_42", "R0014", 2, "T1083", None);
        assert_eq!(u.to_string(), "9aa491e5-f03b-5d8f-9eb5-161becedcdd6");
    }
}
