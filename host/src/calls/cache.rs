//! The persistent response cache: successful model answers in an embedded database (redb),
//! keyed by a hash of the full request.
//!
//! The key covers everything that decides an answer: the provider's identity (endpoint URL and
//! model name, or a local model file's hash and the decoder's revision), the prompt, the
//! sampling parameters with the seed, and the JSON schema. The role is left out: two roles
//! asking one model the same thing get the same answer. Only successful answers are stored. A
//! hit is returned with zero usage (nothing was billed) and marked as a hit in the run log.
//!
//! The file lives in `$DRPO_CACHE_DIR` (default `~/.cache/drpo`) as `responses.redb`. A file
//! that cannot be read as a cache is moved aside (with a warning) and a fresh one started; a
//! cache held by another running `drpo-host` is skipped for this run, with a warning.

use std::path::{Path, PathBuf};

use anyhow::Context;
use redb::{Database, DatabaseError, ReadableDatabase, TableDefinition};
use sha2::{Digest, Sha256};

use crate::bindings::types::{Completion, Request, Usage};

const ANSWERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("answers");

/// Version of the key and value encoding: bumped when either changes, so old entries are
/// simply never found.
const KEY_VERSION: &[u8] = b"drpo-response-cache-v1\0";

/// The cache's file name inside the cache directory.
pub const FILE_NAME: &str = "responses.redb";

/// A cache key: sha256 of the provider's identity and the request.
pub type Key = [u8; 32];

/// The key of `request` sent to the provider with `identity`.
pub fn key(identity: &str, request: &Request) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(KEY_VERSION);
    hasher.update((identity.len() as u64).to_le_bytes());
    hasher.update(identity.as_bytes());
    // bincode is a fixed, length-prefixed encoding: no two requests encode alike.
    let encoded = bincode::serde::encode_to_vec(
        (&request.prompt, &request.sampling, &request.json_schema),
        bincode::config::standard(),
    )
    .expect("requests always encode");
    hasher.update(encoded);
    hasher.finalize().into()
}

/// An open response cache.
pub struct ResponseCache {
    db: Database,
    path: PathBuf,
}

/// What opening the cache led to.
pub enum Opened {
    Ready(ResponseCache),
    /// The cache cannot be used for this run; the text says why (to be shown as a warning).
    Skipped(String),
}

impl ResponseCache {
    /// Opens (or creates) the cache file at `path`. An unreadable file is moved aside to
    /// `PATH.corrupt-UNIXTIME` and replaced with an empty cache; the warning is returned with it.
    pub fn open(path: &Path) -> (Opened, Option<String>) {
        if let Some(parent) = path.parent()
            && let Err(error) = std::fs::create_dir_all(parent)
        {
            return (
                Opened::Skipped(format!(
                    "cannot create the cache directory {}: {error}; running without the response cache",
                    parent.display()
                )),
                None,
            );
        }
        match create(path) {
            Ok(cache) => (Opened::Ready(cache), None),
            Err(OpenError::InUse) => (
                Opened::Skipped(format!(
                    "the response cache {} is in use by another drpo-host; running without it",
                    path.display()
                )),
                None,
            ),
            Err(OpenError::Unreadable(reason)) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
                let warning = format!(
                    "the response cache {} is unreadable ({reason}); moved it to {} and started an empty one",
                    path.display(),
                    aside.display()
                );
                if let Err(error) = std::fs::rename(path, &aside) {
                    return (
                        Opened::Skipped(format!(
                            "{warning}... but moving it failed ({error}); running without the response cache"
                        )),
                        None,
                    );
                }
                match create(path) {
                    Ok(cache) => (Opened::Ready(cache), Some(warning)),
                    Err(OpenError::InUse) | Err(OpenError::Unreadable(_)) => (
                        Opened::Skipped(format!(
                            "{warning}, but cannot create a new one; running without the response cache"
                        )),
                        None,
                    ),
                }
            }
        }
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored answers for `keys` (`None` for a miss). A read error counts as a miss.
    pub fn get(&self, keys: &[Key]) -> Vec<Option<Completion>> {
        let lookup = || -> Result<Vec<Option<Completion>>, redb::Error> {
            let read = self.db.begin_read()?;
            let table = match read.open_table(ANSWERS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
                Err(error) => return Err(error.into()),
            };
            keys.iter()
                .map(|key| {
                    Ok(table.get(key)?.and_then(|value| {
                        bincode::serde::decode_from_slice::<(Vec<String>, u32, u32), _>(
                            value.value(),
                            bincode::config::standard(),
                        )
                        .ok()
                        .map(|((choices, _, _), _)| Completion {
                            choices,
                            usage: Usage {
                                prompt_tokens: 0,
                                completion_tokens: 0,
                            },
                        })
                    }))
                })
                .collect()
        };
        lookup().unwrap_or_else(|_| vec![None; keys.len()])
    }

    /// Stores answers (one transaction). The usage that was billed is kept with them.
    pub fn put(&self, entries: &[(Key, &Completion)]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let write = self.db.begin_write()?;
        {
            let mut table = write.open_table(ANSWERS)?;
            for (key, completion) in entries {
                let value = bincode::serde::encode_to_vec(
                    (
                        &completion.choices,
                        completion.usage.prompt_tokens,
                        completion.usage.completion_tokens,
                    ),
                    bincode::config::standard(),
                )?;
                table.insert(key, value.as_slice())?;
            }
        }
        write
            .commit()
            .with_context(|| format!("cannot write the response cache {}", self.path.display()))
    }
}

enum OpenError {
    InUse,
    Unreadable(String),
}

fn create(path: &Path) -> Result<ResponseCache, OpenError> {
    // redb reports damage as errors; the unwind guard makes sure that a damaged file it did not
    // foresee still cannot take the run down.
    let opened = std::panic::catch_unwind(|| Database::create(path));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => return Err(OpenError::InUse),
        Ok(Err(error)) => return Err(OpenError::Unreadable(error.to_string())),
        Err(_) => {
            return Err(OpenError::Unreadable(
                "the database library panicked".into(),
            ));
        }
    };
    Ok(ResponseCache {
        db,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::Role;
    use crate::testing::chat_request;

    fn request(seed: u64, role: Role) -> Request {
        let mut request = chat_request(role, "hello");
        request.sampling.temperature = 0.5;
        request.sampling.seed = seed;
        request
    }

    fn completion() -> Completion {
        Completion {
            choices: vec!["a".into(), "b".into()],
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
            },
        }
    }

    #[test]
    fn keys_cover_the_endpoint_the_seed_and_the_schema_but_not_the_role() {
        let base = key("e1", &request(1, Role::Judge));
        assert_eq!(base, key("e1", &request(1, Role::Base)));
        assert_ne!(base, key("e2", &request(1, Role::Judge)));
        assert_ne!(base, key("e1", &request(2, Role::Judge)));
        let mut schema = request(1, Role::Judge);
        schema.json_schema = Some("{}".into());
        assert_ne!(base, key("e1", &schema));
    }

    #[test]
    fn answers_survive_reopening_and_come_back_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let k = key("e", &request(1, Role::Judge));
        {
            let (Opened::Ready(cache), None) = ResponseCache::open(&path) else {
                panic!("a fresh cache opens")
            };
            assert_eq!(cache.get(&[k]), vec![None]);
            cache.put(&[(k, &completion())]).unwrap();
        }
        let (Opened::Ready(cache), None) = ResponseCache::open(&path) else {
            panic!("the cache reopens")
        };
        let hit = cache.get(&[k]).remove(0).unwrap();
        assert_eq!(hit.choices, completion().choices);
        assert_eq!(
            (hit.usage.prompt_tokens, hit.usage.completion_tokens),
            (0, 0)
        );
    }

    #[test]
    fn a_corrupt_file_is_set_aside_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, vec![0xA5u8; 8192]).unwrap();
        let (Opened::Ready(cache), Some(warning)) = ResponseCache::open(&path) else {
            panic!("a corrupt cache is replaced")
        };
        assert!(warning.contains("unreadable"), "{warning}");
        let k = key("e", &request(1, Role::Judge));
        cache.put(&[(k, &completion())]).unwrap();
        assert!(cache.get(&[k])[0].is_some());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn a_cache_in_use_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let (Opened::Ready(_first), _) = ResponseCache::open(&path) else {
            panic!("opens")
        };
        let (Opened::Skipped(why), None) = ResponseCache::open(&path) else {
            panic!("a second open is skipped")
        };
        assert!(why.contains("in use"), "{why}");
    }
}
