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

/// Role mailboxes (RFC 2142) whose local part the validator lowercases.
const ROLE_NAMES: &[&str] = &[
    "info",
    "marketing",
    "sales",
    "support",
    "abuse",
    "noc",
    "security",
    "postmaster",
    "hostmaster",
    "usenet",
    "news",
    "webmaster",
    "www",
    "uucp",
    "ftp",
];

fn validate(email: &str) -> Result<String, Refusal> {
    // The validator splits at the first `@`, so a second one is an invalid domain character.
    let Some(at) = email.find('@') else {
        return Err(invalid("An email address must have an @-sign."));
    };
    let (local, domain) = (&email[..at], &email[at + 1..]);
    validate_local(local)?;
    let domain = validate_domain(domain)?;
    let lower = local.to_lowercase();
    let local = if ROLE_NAMES.contains(&lower.as_str()) {
        lower
    } else {
        local.to_owned()
    };
    let normalised = format!("{local}@{domain}");
    let len = normalised.chars().count();
    if len > 254 {
        return Err(Refusal::Invalid(format!(
            "The email address is too long ({} too many).",
            characters(len - 254)
        )));
    }
    Ok(normalised)
}

fn characters(n: usize) -> String {
    if n == 1 {
        "1 character".to_owned()
    } else {
        format!("{n} characters")
    }
}

fn validate_local(local: &str) -> Result<(), Refusal> {
    if local.is_empty() {
        return Err(invalid("There must be something before the @-sign."));
    }
    let mut bad: Vec<char> = local.chars().filter(|c| !local_char_allowed(*c)).collect();
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
        return Err(invalid(
            "An email address cannot have two periods in a row.",
        ));
    }
    Ok(())
}

/// Letters, digits, RFC 5322 atext specials, periods, and (SMTPUTF8) visible non-ASCII.
fn local_char_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || ATEXT_SPECIALS.contains(c)
        || c == '.'
        || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())
}

fn validate_domain(domain: &str) -> Result<String, Refusal> {
    if domain.is_empty() {
        return Err(invalid("There must be something after the @-sign."));
    }
    // Unicode full stops count as periods (IDNA mapping).
    let domain: String = domain
        .chars()
        .map(|c| {
            if matches!(c, '\u{3002}' | '\u{ff0e}' | '\u{ff61}') {
                '.'
            } else {
                c
            }
        })
        .collect::<String>()
        .to_lowercase();
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
        return Err(invalid(
            "An email address cannot have two periods in a row.",
        ));
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
        let len = label.chars().count();
        if len > 63 {
            return Err(Refusal::Invalid(format!(
                "After the @-sign, periods cannot be separated by so many characters ({} too many).",
                characters(len - 63)
            )));
        }
    }
    let ascii = if domain.is_ascii() {
        domain.clone()
    } else {
        idna::domain_to_ascii(&domain)
            .map_err(|_| invalid("The part after the @-sign is not valid IDNA."))?
    };
    if ascii.len() > 253 {
        return Err(Refusal::Invalid(format!(
            "The email address is too long after the @-sign ({} too many).",
            characters(ascii.len() - 253)
        )));
    }
    // Checked in the validator's order: period, top-level domain, special use.
    if !domain.contains('.') {
        return Err(Refusal::SpecialDomain);
    }
    if !ascii.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(invalid(
            "The part after the @-sign is not valid. It is not within a valid top-level domain.",
        ));
    }
    if SPECIAL_USE
        .iter()
        .any(|s| ascii == *s || ascii.ends_with(&format!(".{s}")))
    {
        return Err(Refusal::SpecialDomain);
    }
    Ok(domain)
}

/// Lists offending characters the way the reference does: each quoted, comma-separated.
fn display_chars(chars: &[char]) -> String {
    chars
        .iter()
        .map(|c| match c {
            ' ' => "SPACE".to_owned(),
            '\'' | '\\' => format!("\"{c}\""),
            c if c.is_whitespace() || c.is_control() => format!("U+{:04X}", *c as u32),
            c => format!("'{c}'"),
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
        assert_eq!(ok("Postmaster@Example.com"), "postmaster@example.com");
        assert_eq!(ok("admin@example.c0m"), "admin@example.c0m");
        assert_eq!(ok("a@b\u{3002}c"), "a@b.c");
        assert_eq!(ok(&format!("{}@example.com", "x".repeat(65))).len(), 77);
        assert_eq!(ok("ADMIN@LOCALHOST"), "admin@localhost");
    }

    #[test]
    fn special_domains_take_the_lowercasing_fallback() {
        assert_eq!(ok("Admin@Test.Local"), "admin@test.local");
        assert_eq!(ok("admin@localhost"), "admin@localhost");
        assert_eq!(
            err("a@b"),
            "Email domain must contain a dot or be 'localhost'"
        );
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
        assert_eq!(
            err("a b@example.com"),
            "Invalid email address: The email address contains invalid characters before the @-sign: SPACE."
        );
        assert_eq!(
            err("a(b)@example.com"),
            "Invalid email address: The email address contains invalid characters before the @-sign: '(', ')'."
        );
        assert_eq!(
            err("admin@exa_mple.com"),
            "Invalid email address: The part after the @-sign contains invalid characters: '_'."
        );
        assert_eq!(
            err("a@b@c.com"),
            "Invalid email address: The part after the @-sign contains invalid characters: '@'."
        );
        assert_eq!(
            err("a@b.123"),
            "Invalid email address: The part after the @-sign is not valid. It is not within a valid top-level domain."
        );
        assert_eq!(
            err("admin@example-.com"),
            "Invalid email address: An email address cannot have a period and a hyphen next to each other."
        );
        assert_eq!(
            err("admin@localhost."),
            "Invalid email address: An email address cannot end with a period."
        );
        assert_eq!(
            err(""),
            "Invalid email address: An email address must have an @-sign."
        );
        assert_eq!(
            err("admin@test"),
            "Email domain must contain a dot or be 'localhost'"
        );
        assert_eq!(
            err(&format!("{}@example.com", "x".repeat(300))),
            "Invalid email address: The email address is too long (58 characters too many)."
        );
        // Special-use domains skip the total length check, as the reference does.
        assert!(normalize_email(&format!("{}@test.local", "x".repeat(300))).is_ok());
    }
}
