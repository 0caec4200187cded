//! Passwords: argon2id for every hash we make, bcrypt and MD5 (32 hex digits) accepted from an
//! older system once and rehashed; every hash on a bounded pool of blocking threads.
//!
//! Why a pool of its own: an argon2id hash at OWASP's parameters takes tens of milliseconds of
//! CPU and 19 MiB. Run on the reactor it would stall every connection of the worker; run on an
//! unbounded pool a login flood would take every core from the proxy. [`HashPool`] lets
//! `slots` hashes run at once (threads of its own, each keeping its 19 MiB from one hash to the
//! next) and `queue` more wait; the next login is refused at once with
//! [`Overloaded`](crate::AuthError::Overloaded).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use crate::AuthError;

/// How a stored password hash was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `$argon2id$…`: ours.
    Argon2id,
    /// `$2a$`, `$2b$`, `$2y$`: legacy, rehashed at the next login.
    Bcrypt,
    /// 32 hex digits: the seed's, rehashed at the next login.
    Md5,
    /// Anything else: no password matches it.
    Unknown,
}

impl Scheme {
    /// The scheme of `stored`.
    pub fn of(stored: &str) -> Self {
        if stored.starts_with("$argon2id$") {
            Self::Argon2id
        } else if ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|prefix| stored.starts_with(prefix))
        {
            Self::Bcrypt
        } else if stored.len() == 32 && stored.bytes().all(|b| b.is_ascii_hexdigit()) {
            Self::Md5
        } else {
            Self::Unknown
        }
    }

    /// Its name in the admin API (`password_scheme`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Argon2id => "argon2id",
            Self::Bcrypt => "bcrypt",
            Self::Md5 => "md5",
            Self::Unknown => "unknown",
        }
    }
}

/// argon2id with the configured cost.
#[derive(Debug, Clone)]
pub struct Hasher {
    params: Params,
}

/// What checking a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password (or a hash nothing matches).
    No,
    /// Right, and the stored hash is what we would make today.
    Yes,
    /// Right, but the stored hash is legacy or of other parameters: store a new one.
    YesRehash,
}

impl Hasher {
    /// argon2id with `params` (memory in KiB, iterations, lanes).
    pub fn new(params: sekisho_config::Argon2Params) -> Result<Self, AuthError> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|error| AuthError::Internal(format!("argon2 parameters: {error}")))?;
        Ok(Self { params })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A new `$argon2id$…` hash of `password` with a random salt (the PHC string the argon2
    /// crate's `hash_password` writes, computed in this thread's kept memory).
    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        let failed =
            |error: &dyn std::fmt::Display| AuthError::Internal(format!("argon2: {error}"));
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt
            .as_salt()
            .decode_b64(&mut salt_bytes)
            .map_err(|e| failed(&e))?;
        let argon2 = self.argon2();
        let length = self
            .params
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = Output::init_with(length, |out| {
            hash_into(&argon2, &self.params, password.as_bytes(), salt_bytes, out)
                .map_err(argon2::password_hash::Error::from)
        })
        .map_err(|e| failed(&e))?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| failed(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(hash.to_string())
    }

    /// Checks `password` against `stored`, whatever its scheme; comparisons are constant-time.
    pub fn verify(&self, password: &str, stored: &str) -> Verified {
        let matched = match Scheme::of(stored) {
            Scheme::Argon2id => {
                let Ok(parsed) = PasswordHash::new(stored) else {
                    return Verified::No;
                };
                if !argon2id_matches(password, &parsed) {
                    return Verified::No;
                }
                let current = Params::try_from(&parsed).is_ok_and(|params| {
                    params.m_cost() == self.params.m_cost()
                        && params.t_cost() == self.params.t_cost()
                        && params.p_cost() == self.params.p_cost()
                });
                return if current {
                    Verified::Yes
                } else {
                    Verified::YesRehash
                };
            }
            Scheme::Bcrypt => bcrypt::verify(password, stored).unwrap_or(false),
            Scheme::Md5 => {
                let digest = hex(&Md5::digest(password.as_bytes()));
                bool::from(
                    digest
                        .as_bytes()
                        .ct_eq(stored.to_ascii_lowercase().as_bytes()),
                )
            }
            Scheme::Unknown => false,
        };
        if matched {
            Verified::YesRehash
        } else {
            Verified::No
        }
    }
}

thread_local! {
    /// The memory of this thread's argon2 hashes, kept from one to the next: a hash allocates
    /// nothing. (Allocated per hash, 19 MiB at OWASP's parameters, glibc served them from
    /// per-thread arenas once its mmap threshold had grown past that size, and kept them: a
    /// login storm left the process hundreds of MiB larger. The hashing threads are a fixed
    /// few, so this is `slots` × the hash's memory, for good.)
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2 of `password` and `salt` into `out`, in this thread's kept memory.
fn hash_into(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let needed = params.block_count();
        if blocks.len() < needed {
            blocks.resize(needed, Block::default());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
    })
}

/// Whether `password` is the one `parsed` (an `$argon2id$` PHC string) was made from, with the
/// parameters written in it; the comparison is constant-time.
fn argon2id_matches(password: &str, parsed: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(parsed) else {
        return false;
    };
    let Ok(version) = Version::try_from(parsed.version.unwrap_or(0x13)) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon2 = Argon2::new(Algorithm::Argon2id, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    hash_into(&argon2, &params, password.as_bytes(), salt_bytes, &mut out).is_ok()
        && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

/// A hash to run, and where its answer goes.
type Job = Box<dyn FnOnce() + Send>;

/// Password hashing off the reactor, with admission control: `slots` threads of its own (each
/// keeping its hash memory, see `BLOCKS`), fed by one queue.
#[derive(Debug)]
pub struct HashPool {
    jobs: std::sync::mpsc::Sender<Job>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    slot_count: usize,
}

/// A place in the pool (running or waiting); given back when dropped.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashPool {
    /// `slots` hashes at once (0: one per core), `queue` more waiting (0: four per slot).
    pub fn new(slots: u32, queue: u32) -> Self {
        let slots = match slots {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        let queue = match queue {
            0 => slots * 4,
            n => n as usize,
        };
        let (jobs, waiting) = std::sync::mpsc::channel::<Job>();
        let waiting = Arc::new(std::sync::Mutex::new(waiting));
        for index in 0..slots {
            let waiting = Arc::clone(&waiting);
            let spawned = std::thread::Builder::new()
                .name(format!("sekisho-hash-{index}"))
                .spawn(move || loop {
                    // One job at a time per thread; the queue's lock is held only to take it.
                    let job = match waiting.lock() {
                        Ok(queue) => queue.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    let Ok(job) = job else {
                        return; // the pool is gone
                    };
                    // A panicking hash answers nobody (its caller sees an internal error) and
                    // leaves the thread serving.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a password hashing thread");
            }
        }
        Self {
            jobs,
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: slots + queue,
            slot_count: slots,
        }
    }

    /// Hashes running at once, at most.
    pub fn slots(&self) -> usize {
        self.slot_count
    }

    /// Runs `work` on one of the pool's threads once one is free; refused at once with
    /// [`AuthError::Overloaded`] when every thread is busy and the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(AuthError::Overloaded);
        }
        let admission = Admission(Arc::clone(&self.admitted));
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = answer.send(work());
            }))
            .map_err(|_| AuthError::Internal("no password hashing thread is running".into()))?;
        let result = answered
            .await
            .map_err(|_| AuthError::Internal("the password hash failed".into()));
        drop(admission);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Hasher {
        Hasher::new(sekisho_config::Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .expect("params")
    }

    #[test]
    fn schemes_are_told_apart() {
        assert_eq!(
            Scheme::of("$argon2id$v=19$m=64,t=1,p=1$x$y"),
            Scheme::Argon2id
        );
        assert_eq!(Scheme::of("$2b$04$abcdefghijklmnopqrstuu"), Scheme::Bcrypt);
        assert_eq!(Scheme::of("5f4dcc3b5aa765d61d8327deb882cf99"), Scheme::Md5);
        assert_eq!(Scheme::of("plain"), Scheme::Unknown);
        assert_eq!(
            Scheme::of("$argon2i$v=19$m=64,t=1,p=1$x$y"),
            Scheme::Unknown
        );
    }

    #[test]
    fn argon2id_hashes_verify_and_other_params_ask_for_a_rehash() {
        let hasher = small();
        let stored = hasher.hash("secret").expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        assert_eq!(hasher.verify("secret", &stored), Verified::Yes);
        assert_eq!(hasher.verify("Secret", &stored), Verified::No);
        let stronger = Hasher::new(sekisho_config::Argon2Params {
            memory_kib: 128,
            iterations: 1,
            parallelism: 1,
        })
        .expect("params");
        assert_eq!(stronger.verify("secret", &stored), Verified::YesRehash);
    }

    #[test]
    fn our_hashes_are_the_argon2_crates_phc_strings_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let params = sekisho_config::Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let hasher = Hasher::new(params).expect("params");
        // Ours, checked by the crate's own verifier.
        let ours = hasher.hash("secret").expect("hash");
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(hasher.argon2().verify_password(b"secret", &parsed).is_ok());
        assert!(hasher.argon2().verify_password(b"Secret", &parsed).is_err());
        // The crate's (every hash stored before this change), checked by ours.
        let salt = SaltString::generate(&mut OsRng);
        let theirs = hasher
            .argon2()
            .hash_password(b"secret", &salt)
            .expect("hash")
            .to_string();
        assert_eq!(hasher.verify("secret", &theirs), Verified::Yes);
        assert_eq!(hasher.verify("secreT", &theirs), Verified::No);
        // Other parameters still verify, and ask for a rehash; a bigger memory than the last
        // hash of this thread is no problem.
        let bigger = Hasher::new(sekisho_config::Argon2Params {
            memory_kib: 256,
            iterations: 2,
            parallelism: 1,
        })
        .expect("params")
        .hash("secret")
        .expect("hash");
        assert_eq!(hasher.verify("secret", &bigger), Verified::YesRehash);
        assert_eq!(hasher.verify("other", &bigger), Verified::No);
    }

    #[tokio::test]
    async fn a_panicking_hash_is_an_internal_error_and_the_thread_keeps_serving() {
        let pool = HashPool::new(1, 1);
        let failed = pool.run(|| -> u8 { panic!("a hash that panics") }).await;
        assert!(matches!(failed, Err(AuthError::Internal(_))), "{failed:?}");
        assert_eq!(pool.run(|| 5).await.expect("ran"), 5);
        // The work runs on the pool's own thread, not the caller's.
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("sekisho-hash-0"));
    }

    #[test]
    fn legacy_hashes_verify_once_and_ask_for_a_rehash() {
        let hasher = small();
        // MD5("password"), as the seed stored it.
        let md5 = "5f4dcc3b5aa765d61d8327deb882cf99";
        assert_eq!(hasher.verify("password", md5), Verified::YesRehash);
        assert_eq!(
            hasher.verify("password", &md5.to_uppercase()),
            Verified::YesRehash
        );
        assert_eq!(hasher.verify("passwore", md5), Verified::No);
        let bcrypt = bcrypt::hash("password", 4).expect("bcrypt");
        assert_eq!(hasher.verify("password", &bcrypt), Verified::YesRehash);
        assert_eq!(hasher.verify("nope", &bcrypt), Verified::No);
        assert_eq!(hasher.verify("password", "garbage"), Verified::No);
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once() {
        let pool = Arc::new(HashPool::new(1, 1));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let running = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started_tx.send(());
                    let _ = wait.recv();
                })
                .await
            })
        };
        started.await.expect("first hash started");
        let queued = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(|| 2).await })
        };
        // The queued one holds the second place once admitted; wait until it is.
        while pool.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.run(|| 3).await, Err(AuthError::Overloaded)));
        release.send(()).expect("release");
        running.await.expect("join").expect("ran");
        assert_eq!(queued.await.expect("join").expect("ran"), 2);
        assert_eq!(pool.run(|| 4).await.expect("ran"), 4);
    }
}
