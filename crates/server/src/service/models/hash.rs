//! Content hashes of installed models (models.md §1.1): `blake3:<hex>` by default.
//!
//! A folder's hash follows InvokeAI's `ModelHash`: hash every weight file below it (sorted by
//! path), then hash the concatenated hex digests, so hashes stay stable across re-installs and
//! match what InvokeAI computes for the same files. `blake3_multi` and `blake3_single` give the
//! same digest (they differ only in threading). Algorithms without a hasher here fall back to
//! blake3 and say so with their prefix.

use super::probe::WEIGHT_EXTENSIONS;
use sha2::Digest;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

const CHUNK: usize = 1 << 20;

#[derive(Clone, Copy)]
enum Algo {
    Blake3,
    Sha256,
    Sha512,
}

fn digest_file(path: &Path, algo: Algo) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    macro_rules! stream {
        ($hasher:expr, $finish:expr) => {{
            let mut hasher = $hasher;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            $finish(hasher)
        }};
    }
    Ok(match algo {
        Algo::Blake3 => stream!(blake3::Hasher::new(), |h: blake3::Hasher| h
            .finalize()
            .to_hex()
            .to_string()),
        Algo::Sha256 => stream!(sha2::Sha256::new(), |h: sha2::Sha256| hex(&h.finalize())),
        Algo::Sha512 => stream!(sha2::Sha512::new(), |h: sha2::Sha512| hex(&h.finalize())),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Weight files below `dir`, sorted.
pub fn weight_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e.as_str()))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Total size in bytes of a file, or of every file below a folder.
pub fn size_of(path: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// The prefixed hash of the model at `path` under config `hashing_algorithm`. Blocking: run it
/// off the async threads.
pub fn hash_model(path: &Path, algorithm: &str) -> io::Result<String> {
    let (prefix, algo) = match algorithm {
        "sha256" => ("sha256", Algo::Sha256),
        "sha512" => ("sha512", Algo::Sha512),
        "random" => return Ok(format!("random:{}", uuid::Uuid::new_v4().simple())),
        _ => ("blake3", Algo::Blake3),
    };
    let digest = if path.is_dir() {
        let mut composite = match algo {
            Algo::Blake3 => Composite::Blake3(Box::default()),
            Algo::Sha256 => Composite::Sha256(sha2::Sha256::new()),
            Algo::Sha512 => Composite::Sha512(sha2::Sha512::new()),
        };
        for file in weight_files(path)? {
            composite.update(digest_file(&file, algo)?.as_bytes());
        }
        composite.finish()
    } else {
        digest_file(path, algo)?
    };
    Ok(format!("{prefix}:{digest}"))
}

enum Composite {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Composite {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Blake3(h) => {
                h.update(bytes);
            }
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            Self::Blake3(h) => h.finalize().to_hex().to_string(),
            Self::Sha256(h) => hex(&h.finalize()),
            Self::Sha512(h) => hex(&h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_folders_hash_like_invokeai() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("a.safetensors");
        std::fs::write(&file, b"hello").expect("write");
        let expected = blake3::hash(b"hello").to_hex().to_string();
        assert_eq!(
            hash_model(&file, "blake3_single").expect("hash"),
            format!("blake3:{expected}")
        );
        assert_eq!(
            hash_model(&file, "blake3_multi").expect("hash"),
            format!("blake3:{expected}")
        );
        std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
        let composite = blake3::hash(expected.as_bytes()).to_hex().to_string();
        assert_eq!(
            hash_model(dir.path(), "blake3_single").expect("hash"),
            format!("blake3:{composite}")
        );
        assert!(hash_model(&file, "sha256")
            .expect("hash")
            .starts_with("sha256:2cf24dba"));
        assert_eq!(size_of(dir.path()).expect("size"), 12);
    }
}
