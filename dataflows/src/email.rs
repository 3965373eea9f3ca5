//! Email evidence: what a tag may say about a message without carrying its content.
//!
//! Email tags never hold addresses or bodies (DESIGN §2.12). Every email tag carries the
//! same base evidence as DECNET's — the body's SHA-256 (from the payload, else of
//! `body_text`), the attachments' SHA-256s, the recipient count and the set of recipient
//! domains (lower-cased, sorted; an address in `rcpt_domains` gives only its domain) —
//! plus what its predicate matched.

use sha2::{Digest, Sha256};

use crate::json::Json;
use crate::record::Extra;

/// The base evidence of an email tag.
pub fn base_evidence(payload: &Json) -> Extra {
    let body_sha256 = match payload.get("body_sha256") {
        Some(Json::Str(hash)) if !hash.is_empty() => hash.clone(),
        _ => match payload.get("body_text") {
            Some(Json::Str(text)) if !text.is_empty() => {
                Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
            }
            _ => String::new(),
        },
    };
    let attachments = match payload.get("attachment_sha256s") {
        Some(Json::Arr(items)) => items.clone(),
        _ => Vec::new(),
    };
    let rcpt_count = match payload.get("rcpt_count") {
        Some(count @ Json::Num(_)) if count.is_truthy() => count.clone(),
        _ => Json::Num("0".to_string()),
    };
    let mut domains: Vec<String> = match payload.get("rcpt_domains") {
        // Producers are meant to send domains; an address sent instead gives only its domain.
        Some(Json::Arr(items)) => items.iter().filter_map(Json::as_str).map(domain_of).collect(),
        _ => Vec::new(),
    };
    domains.sort();
    domains.dedup();
    vec![
        ("attachment_sha256s".to_string(), Json::Arr(attachments)),
        ("body_sha256".to_string(), Json::Str(body_sha256)),
        ("rcpt_count".to_string(), rcpt_count),
        ("rcpt_domain_set".to_string(), Json::Arr(domains.into_iter().map(Json::Str).collect())),
    ]
}

/// The evidence of an email tag: the base, the headers that matched, then `extra`.
pub fn evidence(payload: &Json, matched_headers: &[&str], extra: Extra) -> Extra {
    let mut evidence = base_evidence(payload);
    let headers = matched_headers.iter().map(|h| Json::Str(h.to_string())).collect();
    evidence.push(("matched_headers".to_string(), Json::Arr(headers)));
    evidence.extend(extra);
    evidence
}

/// The domain of an address or a bare domain, lower-cased.
pub fn domain_of(address: &str) -> String {
    address.rsplit('@').next().unwrap_or(address).to_lowercase()
}

/// The host of an absolute URL, lower-cased, without user info or port.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("//")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_evidence_hashes_and_normalises() {
        let payload = Json::parse(r#"{"body_text":"see body","rcpt_domains":["Victim.Example","carol.addr@mail.example","victim.example"],"rcpt_count":3,"from_domain":"x@y"}"#).unwrap();
        assert_eq!(
            Json::Obj(base_evidence(&payload)).to_json_string(),
            r#"{"attachment_sha256s":[],"body_sha256":"d566905307e5997593a8fee8e90d7fb3158be1df973735dfa16c61719e698ae7","rcpt_count":3,"rcpt_domain_set":["mail.example","victim.example"]}"#
        );
        let empty = Json::parse("{}").unwrap();
        assert_eq!(
            Json::Obj(base_evidence(&empty)).to_json_string(),
            r#"{"attachment_sha256s":[],"body_sha256":"","rcpt_count":0,"rcpt_domain_set":[]}"#
        );
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(url_host("https://XN--80ak6aa92e.com/login").as_deref(), Some("xn--80ak6aa92e.com"));
        assert_eq!(url_host("http://u:p@host.example:8080/x?y").as_deref(), Some("host.example"));
        assert_eq!(url_host("http://[::1]:80/").as_deref(), Some("::1"));
        assert_eq!(url_host("xn--a.com/x"), None);
    }
}
