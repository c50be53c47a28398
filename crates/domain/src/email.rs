//! Email validation and normalisation (auth.md §9.6).
//!
//! The reference validates with Python's `email-validator` (no DNS checks) and, when that
//! refuses an address only because its domain is special-use or has no dot, falls back to a
//! lenient check that lowercases the whole address. This module reproduces the observable
//! behaviour: which addresses are accepted, their normalised form, and the messages.
//!
//! Normalised form: local part as given (NFC is the identity for the inputs clients send),
//! domain lowercased and kept in Unicode form. Lookups afterwards are exact.

use crate::error::DomainError;

/// Domains that `email-validator` refuses as special-use; they take the fallback path.
const SPECIAL_USE: &[&str] = &["arpa", "invalid", "local", "localhost", "onion", "test"];

/// Characters allowed unquoted in a local part besides letters and digits (RFC 5322 atext).
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Refused only because of the domain's shape: the fallback may still accept it.
    SpecialDomain,
    /// Refused for anything else, with the validator's message.
    Invalid(String),
}

/// Validates `input` and returns its normalised form, or the contract's message.
pub fn normalize_email(input: &str) -> Result<String, DomainError> {
    match validate(input) {
        Ok(normalised) => Ok(normalised),
        Err(Refusal::SpecialDomain) => fallback(input),
        Err(Refusal::Invalid(msg)) => Err(DomainError::InvalidEmail(format!(
            "Invalid email address: {msg}"
        ))),
    }
}

/// The lenient path for special-use and dotless domains (`admin@localhost`, `a@test.local`).
fn fallback(input: &str) -> Result<String, DomainError> {
    let email = input.trim().to_lowercase();
    let Some(at) = email.rfind('@') else {
        return Err(DomainError::InvalidEmail(
            "Email address must contain an @ symbol".to_owned(),
        ));
    };
    let (local, domain) = (&email[..at], &email[at + 1..]);
    if local.is_empty() || domain.is_empty() {
        return Err(DomainError::InvalidEmail(
            "Email address must have both local and domain parts".to_owned(),
        ));
    }
    if domain != "localhost" && !domain.contains('.') {
        return Err(DomainError::InvalidEmail(
            "Email domain must contain a dot or be 'localhost'".to_owned(),
        ));
    }
    Ok(email)
}

fn invalid(msg: &str) -> Refusal {
    Refusal::Invalid(msg.to_owned())
}

fn validate(email: &str) -> Result<String, Refusal> {
    let Some(at) = email.rfind('@') else {
        return Err(invalid("An email address must have an @-sign."));
    };
    let (local, domain) = (&email[..at], &email[at + 1..]);
    validate_local(local)?;
    let domain = validate_domain(domain)?;
    Ok(format!("{local}@{domain}"))
}

fn validate_local(local: &str) -> Result<(), Refusal> {
    if local.is_empty() {
        return Err(invalid("There must be something before the @-sign."));
    }
    let len = local.chars().count();
    if len > 64 {
        let over = len - 64;
        let plural = if over == 1 { "" } else { "s" };
        return Err(Refusal::Invalid(format!(
            "The email address is too long before the @-sign ({over} character{plural} too many)."
        )));
    }
    let mut bad: Vec<char> = local
        .chars()
        .filter(|c| {
            !(c.is_ascii_alphanumeric()
                || ATEXT_SPECIALS.contains(*c)
                || *c == '.'
                || (!c.is_ascii() && !c.is_whitespace() && !c.is_control()))
        })
        .collect();
    if !bad.is_empty() {
        bad.sort_unstable();
        bad.dedup();
        return Err(Refusal::Invalid(format!(
            "The email address contains invalid characters before the @-sign: {}.",
            display_chars(&bad)
        )));
    }
    if local.starts_with('.') {
        return Err(invalid("An email address cannot start with a period."));
    }
    if local.ends_with('.') {
        return Err(invalid(
            "An email address cannot have a period immediately before the @-sign.",
        ));
    }
    if local.contains("..") {
        return Err(invalid("An email address cannot have two periods in a row."));
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<String, Refusal> {
    if domain.is_empty() {
        return Err(invalid("There must be something after the @-sign."));
    }
    let domain = domain.to_lowercase();
    let mut bad: Vec<char> = domain
        .chars()
        .filter(|c| {
            !(c.is_ascii_alphanumeric()
                || *c == '-'
                || *c == '.'
                || (!c.is_ascii() && c.is_alphanumeric()))
        })
        .collect();
    if !bad.is_empty() {
        bad.sort_unstable();
        bad.dedup();
        return Err(Refusal::Invalid(format!(
            "The part after the @-sign contains invalid characters: {}.",
            display_chars(&bad)
        )));
    }
    if domain.starts_with('.') {
        return Err(invalid(
            "An email address cannot have a period immediately after the @-sign.",
        ));
    }
    if domain.ends_with('.') {
        return Err(invalid("An email address cannot end with a period."));
    }
    if domain.contains("..") {
        return Err(invalid("An email address cannot have two periods in a row."));
    }
    for label in domain.split('.') {
        if label.starts_with('-') {
            return Err(invalid(
                "An email address cannot have a hyphen immediately after the @-sign.",
            ));
        }
        if label.ends_with('-') {
            return Err(invalid(
                "An email address cannot have a period and a hyphen next to each other.",
            ));
        }
        if label.chars().count() > 63 {
            return Err(invalid(
                "After the @-sign, periods cannot be separated by so many characters.",
            ));
        }
    }
    if !domain.is_ascii() && idna::domain_to_ascii(&domain).is_err() {
        return Err(invalid(
            "The part after the @-sign contains invalid characters.",
        ));
    }
    if domain.len() > 253 {
        return Err(invalid("The email address is too long after the @-sign."));
    }
    if !domain.contains('.') {
        return Err(Refusal::SpecialDomain);
    }
    if SPECIAL_USE
        .iter()
        .any(|s| domain == *s || domain.ends_with(&format!(".{s}")))
    {
        return Err(Refusal::SpecialDomain);
    }
    let tld = domain.rsplit('.').next().unwrap_or_default();
    if tld.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(
            "The part after the @-sign is not valid. It is not within a valid top-level domain.",
        ));
    }
    Ok(domain)
}

/// Lists offending characters the way the reference does: each quoted, comma-separated.
fn display_chars(chars: &[char]) -> String {
    chars
        .iter()
        .map(|c| {
            if c.is_whitespace() {
                let name = match c {
                    ' ' => "SPACE".to_owned(),
                    '\t' => "TAB".to_owned(),
                    other => format!("U+{:04X}", *other as u32),
                };
                name
            } else {
                format!("'{c}'")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> String {
        normalize_email(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn err(input: &str) -> String {
        normalize_email(input).unwrap_err().to_string()
    }

    #[test]
    fn domain_lowercased_local_case_kept() {
        assert_eq!(ok("User@Example.COM"), "User@example.com");
        assert_eq!(ok("a.b+c@sub.example.org"), "a.b+c@sub.example.org");
        assert_eq!(ok("Ünï@Bücher.DE"), "Ünï@bücher.de");
    }

    #[test]
    fn special_domains_take_the_lowercasing_fallback() {
        assert_eq!(ok("Admin@Test.Local"), "admin@test.local");
        assert_eq!(ok("admin@localhost"), "admin@localhost");
        assert_eq!(err("a@b"), "Email domain must contain a dot or be 'localhost'");
    }

    #[test]
    fn other_failures_carry_the_validator_message() {
        assert_eq!(
            err("notanemail"),
            "Invalid email address: An email address must have an @-sign."
        );
        assert_eq!(
            err("@example.com"),
            "Invalid email address: There must be something before the @-sign."
        );
        assert_eq!(
            err("a..b@example.com"),
            "Invalid email address: An email address cannot have two periods in a row."
        );
        assert!(err("a b@example.com").starts_with("Invalid email address: "));
        assert!(err("a@exa mple.com").starts_with("Invalid email address: "));
    }
}
