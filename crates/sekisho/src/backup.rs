//! `sekisho backup` and `sekisho restore`: the store the config's `[store]` names, to a file and
//! back (sekisho-db's `backup.rs` holds the format; see docs/operations.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::read_config;

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// The store's database, refusing an embedded one that does not exist yet (there is nothing to
/// back up, and opening it would create it).
async fn open_existing(
    config: &sekisho_config::Config,
    base: Option<&Path>,
) -> anyhow::Result<sekisho_db::Database> {
    if config.store.database.is_none() {
        let file = sekisho_db::data_dir(&config.store, base).join("sekisho.db");
        anyhow::ensure!(
            file.exists(),
            "there is no store at {}: nothing to back up (check [store] data_dir)",
            file.display()
        );
    }
    Ok(sekisho_auth::open_database(config, base).await?)
}

/// `sekisho backup --config FILE --out FILE`: a consistent copy while the gateway runs, written
/// beside its destination and renamed into place once complete, so `--out` never names half a
/// backup; `--out -` writes to stdout.
pub(crate) fn backup(config_path: &Path, out: &Path) -> anyhow::Result<()> {
    block_on(async move {
        let (config, _) = read_config(config_path)?;
        let database = open_existing(&config, config_path.parent()).await?;
        let (summary, destination) = if out == Path::new("-") {
            let stdout = std::io::stdout();
            let summary = database
                .backup(std::io::BufWriter::new(stdout.lock()))
                .await?;
            (summary, "(stdout)".to_owned())
        } else {
            let partial = partial_path(out);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let written = database.backup(&mut writer).await;
            let finished = written.map_err(anyhow::Error::from).and_then(|summary| {
                let file = writer.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                std::fs::rename(&partial, out)
                    .with_context(|| format!("cannot move the backup to {}", out.display()))?;
                sync_directory(out);
                Ok(summary)
            });
            let summary = match finished {
                Ok(summary) => summary,
                Err(error) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(error.context(format!("backup to {} failed", out.display())));
                }
            };
            (summary, out.display().to_string())
        };
        database
            .record_backup(&destination, &summary)
            .await
            .context("the backup is complete, but recording it (for backup_age) failed")?;
        eprintln!(
            "sekisho: backup of {} written to {destination}: {} tables, {} rows, {} bytes, sha256 {}",
            database.url(),
            summary.rows.len(),
            summary.total_rows(),
            summary.bytes,
            summary.sha256
        );
        database.close().await;
        Ok(())
    })
}

/// `FILE` → `FILE.partial` in the same directory (so the rename stays on one file system).
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Makes the rename durable (best effort: some file systems refuse to open a directory).
fn sync_directory(file: &Path) {
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Ok(directory) = std::fs::File::open(directory) {
        let _ = directory.sync_all();
    }
}

/// `sekisho restore --config FILE BACKUP`: replaces the store's content with the backup's, all
/// or nothing. Refuses while something answers on the config's admin address (an instance still
/// running would keep serving what it cached) unless `force`.
pub(crate) fn restore(config_path: &Path, file: &Path, force: bool) -> anyhow::Result<()> {
    block_on(async move {
        let (config, _) = read_config(config_path)?;
        if !force {
            let admin = config.admin.listen.0.clone();
            let connect = tokio::net::TcpStream::connect(admin.as_str());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                anyhow::bail!(
                    "something answers on the admin address {admin}: a sekisho instance still runs \
                     on this config; stop every instance using the store first (or pass --force)"
                );
            }
        }
        let reader = std::fs::File::open(file)
            .with_context(|| format!("cannot open the backup {}", file.display()))?;
        let database = sekisho_auth::open_database(&config, config_path.parent()).await?;
        let summary = database
            .restore(std::io::BufReader::new(reader))
            .await
            .with_context(|| format!("{}: nothing was restored", file.display()))?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "restored {} into {}: backup taken at {} ms since the epoch, {} rows",
            file.display(),
            database.url(),
            summary.created_at,
            summary.total_rows()
        )?;
        for (table, rows) in &summary.rows {
            writeln!(out, "  {table}: {rows}")?;
        }
        database.close().await;
        Ok(())
    })
}
