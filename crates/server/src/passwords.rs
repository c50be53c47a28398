//! bcrypt hashing and verification off the async runtime, and password generation.
//!
//! bcrypt at cost 12 takes a quarter of a second of CPU, so it always runs on the blocking
//! pool, and a semaphore keeps at most one hash per core in flight: a burst of logins then
//! queues instead of starving the runtime's worker threads of CPU.

use crate::http::error::ApiError;
use atelier_domain::password::bcrypt_input;
use rand::seq::SliceRandom;
use std::sync::Arc;
use tokio::sync::Semaphore;

const COST: u32 = 12;

#[derive(Clone, Debug)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    cost: u32,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new(COST)
    }
}

impl Hasher {
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            permits: Arc::new(Semaphore::new(cores)),
            cost,
        }
    }

    /// `$2b$12$…` of the password's first 72 bytes.
    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let input = bcrypt_input(password).to_vec();
        let cost = self.cost;
        tokio::task::spawn_blocking(move || hash_sync(&input, cost))
            .await
            .map_err(ApiError::internal)?
    }

    /// Whether `password` matches `hash`; any malformed hash is a mismatch.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let input = bcrypt_input(password).to_vec();
        let hash = hash.to_owned();
        tokio::task::spawn_blocking(move || verify_sync(&input, &hash))
            .await
            .map_err(ApiError::internal)
    }
}

pub fn hash_sync(input: &[u8], cost: u32) -> Result<String, ApiError> {
    if input.contains(&0) {
        return Err(ApiError::bad_request(
            "Password must not contain NUL characters",
        ));
    }
    bcrypt::hash_with_result(input, cost)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoB))
        .map_err(ApiError::internal)
}

pub fn verify_sync(input: &[u8], hash: &str) -> bool {
    if hash.is_empty() || input.contains(&0) {
        return false;
    }
    bcrypt::verify(input, hash).unwrap_or(false)
}

/// 16 characters from the 94 printable non-space ASCII characters, drawn with the OS CSPRNG,
/// redrawn until they hold an uppercase letter, a lowercase letter and a digit.
pub fn generate_password() -> String {
    let alphabet: Vec<char> = (b'!'..=b'~').map(char::from).collect();
    let mut rng = rand::rngs::OsRng;
    loop {
        let candidate: String = (0..16)
            .map(|_| *alphabet.choose(&mut rng).unwrap_or(&'a'))
            .collect();
        let ok = candidate.chars().any(|c| c.is_ascii_uppercase())
            && candidate.chars().any(|c| c.is_ascii_lowercase())
            && candidate.chars().any(|c| c.is_ascii_digit());
        if ok {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_2b_cost_12_and_verify_across_variants() {
        let h = hash_sync(b"hunter2", 4).expect("hash");
        assert!(h.starts_with("$2b$04$"));
        assert!(verify_sync(b"hunter2", &h));
        assert!(!verify_sync(b"hunter3", &h));
        let y = h.replacen("$2b$", "$2y$", 1);
        let a = h.replacen("$2b$", "$2a$", 1);
        assert!(verify_sync(b"hunter2", &y) && verify_sync(b"hunter2", &a));
        assert!(!verify_sync(b"hunter2", ""));
        assert!(!verify_sync(b"hunter2", "not a hash"));
    }

    #[test]
    fn long_passwords_share_their_first_72_bytes() {
        let base = "é".repeat(40); // 80 bytes
        let h = hash_sync(bcrypt_input(&base), 4).expect("hash");
        let other = format!("{}zzz", "é".repeat(36));
        assert!(verify_sync(bcrypt_input(&other), &h));
    }

    #[test]
    fn generated_passwords_follow_the_rules() {
        for _ in 0..200 {
            let p = generate_password();
            assert_eq!(p.chars().count(), 16);
            assert!(p.chars().all(|c| c.is_ascii_graphic()));
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
        }
    }
}
