//! The password policy (auth.md §9.5) and bcrypt's 72-byte input rule (§9.4).

use crate::error::DomainError;

/// Which policy the server applies; the CLI always applies `Strict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordPolicy {
    /// `strict_password_checking: true`: 8+ code points and upper, lower and digit.
    Strict,
    /// The default: only non-empty.
    NonEmpty,
}

impl PasswordPolicy {
    pub fn from_strict(strict: bool) -> Self {
        if strict {
            Self::Strict
        } else {
            Self::NonEmpty
        }
    }

    /// Checks `password`, returning the contract's message on failure.
    pub fn check(self, password: &str) -> Result<(), DomainError> {
        match self {
            Self::NonEmpty if password.is_empty() => Err(DomainError::PasswordPolicy(
                "Password cannot be empty".to_owned(),
            )),
            Self::NonEmpty => Ok(()),
            Self::Strict => {
                if password.chars().count() < 8 {
                    return Err(DomainError::PasswordPolicy(
                        "Password must be at least 8 characters long".to_owned(),
                    ));
                }
                // Unicode classes, as Python's str.isupper/islower/isdigit: `Ä`, `ß` and `²`
                // count (a client's ASCII regex would not).
                let upper = password.chars().any(char::is_uppercase);
                let lower = password.chars().any(char::is_lowercase);
                let digit = password.chars().any(is_python_digit);
                if upper && lower && digit {
                    Ok(())
                } else {
                    Err(DomainError::PasswordPolicy(
                        "Password must contain uppercase, lowercase, and numbers".to_owned(),
                    ))
                }
            }
        }
    }
}

/// Python's `str.isdigit`: decimal digits plus the digit-like characters such as
/// superscripts (`²`), circled and parenthesised digits. Rust's `char::is_numeric` is wider
/// (it also takes fractions and roman numerals), so those are excluded here.
fn is_python_digit(c: char) -> bool {
    if c.is_ascii_digit() {
        return true;
    }
    if !c.is_numeric() {
        return false;
    }
    // Numeric but not a digit in Python: vulgar fractions, roman numerals, CJK numerals…
    let not_digits: &[(u32, u32)] = &[
        (0x00BC, 0x00BE), // ¼ ½ ¾
        (0x2150, 0x218B), // number forms: fractions and roman numerals
        (0x3007, 0x3007), // 〇
        (0x3021, 0x3029), // Hangzhou numerals
        (0x4E00, 0x9FFF), // CJK ideographs with numeric values
        (0x16EE, 0x16F0), // runic
        (0x2CFD, 0x2CFD),
        (0x3038, 0x303A),
    ];
    let code = c as u32;
    !not_digits
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&code))
}

/// Returns the bytes bcrypt sees: the UTF-8 encoding cut to 72 bytes, without a split
/// trailing character. Two passwords with the same first 72 bytes are therefore equivalent.
pub fn bcrypt_input(password: &str) -> &[u8] {
    const LIMIT: usize = 72;
    if password.len() <= LIMIT {
        return password.as_bytes();
    }
    let mut end = LIMIT;
    while !password.is_char_boundary(end) {
        end -= 1;
    }
    &password.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_empty_policy() {
        assert_eq!(
            PasswordPolicy::NonEmpty.check("").unwrap_err().to_string(),
            "Password cannot be empty"
        );
        assert!(PasswordPolicy::NonEmpty.check("a").is_ok());
    }

    #[test]
    fn strict_policy_counts_code_points_and_unicode_classes() {
        let s = PasswordPolicy::Strict;
        assert_eq!(
            s.check("Ab1").unwrap_err().to_string(),
            "Password must be at least 8 characters long"
        );
        // 8 code points, more bytes.
        assert!(s.check("Äbcdefg1").is_ok());
        assert!(s.check("ÄÖÜßabc²").is_ok());
        assert_eq!(
            s.check("abcdefgh1").unwrap_err().to_string(),
            "Password must contain uppercase, lowercase, and numbers"
        );
        assert!(s.check("ABCdefgh½").is_err());
        assert!(s.check("").is_err());
    }

    #[test]
    fn bcrypt_input_drops_split_characters() {
        let ascii = "a".repeat(80);
        assert_eq!(bcrypt_input(&ascii).len(), 72);
        // 71 ASCII bytes then a 2-byte char: the char would straddle byte 72, so it is dropped.
        let split = format!("{}é", "a".repeat(71));
        assert_eq!(bcrypt_input(&split).len(), 71);
        let short = "héllo";
        assert_eq!(bcrypt_input(short), short.as_bytes());
    }
}
