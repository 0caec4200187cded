//! Throw-away databases for tests: a SQLite file in a fresh directory, or a fresh PostgreSQL
//! database on `SEKISHO_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`), each
//! removed by [`TestDatabase::remove`].

use std::path::PathBuf;

use crate::{Database, DbError, Dialect};

/// The PostgreSQL server the tests use.
pub fn postgres_server() -> String {
    std::env::var("SEKISHO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database made for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its URL, for a config's `store.database` (PostgreSQL) …
    pub url: String,
    /// … or its directory, for `store.data_dir` (SQLite).
    pub dir: Option<PathBuf>,
    /// Which.
    pub dialect: Dialect,
    name: String,
}

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("sekisho_test_{}_{nanos}_{count}", std::process::id())
}

impl TestDatabase {
    /// A fresh database of `dialect`.
    pub async fn new(dialect: Dialect) -> Result<Self, DbError> {
        let name = unique_name();
        match dialect {
            Dialect::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).map_err(|source| DbError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                let url = format!("sqlite://{}?mode=rwc", dir.join("sekisho.db").display());
                Ok(Self {
                    url,
                    dir: Some(dir),
                    dialect,
                    name,
                })
            }
            Dialect::Postgres => {
                let server = postgres_server();
                let admin = Database::connect(&format!("{server}/postgres"), 1).await?;
                sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                    .execute(admin.pool())
                    .await?;
                admin.close().await;
                Ok(Self {
                    url: format!("{server}/{name}"),
                    dir: None,
                    dialect,
                    name,
                })
            }
        }
    }

    /// Opens it.
    pub async fn open(&self) -> Result<Database, DbError> {
        Database::connect(&self.url, 4).await
    }

    /// The `[store]` lines a config needs to use it.
    pub fn store_toml(&self) -> String {
        match &self.dir {
            Some(dir) => format!("[store]\ndata_dir = \"{}\"\n", dir.display()),
            None => format!("[store]\ndatabase = \"{}\"\n", self.url),
        }
    }

    /// Removes it (the directory, or the PostgreSQL database with whoever is still connected).
    /// A SQLite directory is also removed when the value is dropped (a test that panicked).
    pub async fn remove(mut self) -> Result<(), DbError> {
        match self.dialect {
            Dialect::Sqlite => {
                if let Some(dir) = self.dir.take() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Dialect::Postgres => {
                let admin =
                    Database::connect(&format!("{}/postgres", postgres_server()), 1).await?;
                sqlx::raw_sql(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .execute(admin.pool())
                .await?;
                admin.close().await;
            }
        }
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
