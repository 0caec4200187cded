//! `sekisho user …`, `sekisho role …` and `sekisho migrate`: the identity store from the
//! command line, on the database the config's `[store]` names.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use sekisho_auth::Auth;

use crate::{read_config, RoleCommand, UserCommand};

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

async fn open(path: &Path) -> anyhow::Result<Auth> {
    let (config, _) = read_config(path)?;
    Auth::open(&config, path.parent())
        .await
        .context("cannot open the identity store")
}

fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "the password read from stdin is empty"
    );
    Ok(password)
}

pub(crate) fn user(command: UserCommand) -> anyhow::Result<()> {
    block_on(async move {
        match command {
            UserCommand::Add {
                config,
                name,
                roles,
                password_stdin,
                password_hash,
            } => {
                anyhow::ensure!(
                    password_stdin || password_hash.is_some(),
                    "give --password-stdin or --password-hash"
                );
                let password = if password_stdin {
                    Some(password_from_stdin()?)
                } else {
                    None
                };
                let auth = open(&config).await?;
                let user = auth
                    .create_user(&name, password.as_deref(), password_hash.as_deref(), &roles)
                    .await?;
                auth.flush().await;
                println!(
                    "user {} created (id {}, roles [{}], {})",
                    user.username,
                    user.id,
                    user.roles.join(","),
                    user.password_scheme
                );
            }
            UserCommand::Passwd { config, name, .. } => {
                let password = password_from_stdin()?;
                let auth = open(&config).await?;
                auth.set_password(&name, &password).await?;
                auth.flush().await;
                println!("password of {name} changed; its sessions are revoked");
            }
            UserCommand::Del { config, name } => {
                let auth = open(&config).await?;
                auth.delete_user(&name).await?;
                auth.flush().await;
                println!("user {name} deleted");
            }
            UserCommand::List { config } => {
                let auth = open(&config).await?;
                for user in auth.users().await? {
                    println!(
                        "{}\tid={}\troles={}\tdisabled={}\tscheme={}",
                        user.username,
                        user.id,
                        user.roles.join(","),
                        user.disabled,
                        user.password_scheme
                    );
                }
            }
        }
        Ok(())
    })
}

pub(crate) fn role(command: RoleCommand) -> anyhow::Result<()> {
    block_on(async move {
        let RoleCommand::Add {
            config,
            name,
            permissions,
        } = command;
        let auth = open(&config).await?;
        auth.put_role(&name, &permissions).await?;
        auth.flush().await;
        println!("role {name}: permissions [{}]", permissions.join(","));
        Ok(())
    })
}

pub(crate) fn migrate(path: &Path, status: bool) -> anyhow::Result<()> {
    block_on(async move {
        let (config, _) = read_config(path)?;
        let database = sekisho_auth::open_database(&config, path.parent()).await?;
        if !status {
            let applied = database.migrate().await?;
            println!("{}: {} migration(s) applied", database.url(), applied.len());
        }
        for state in database.status().await? {
            let applied = match (state.applied_at, state.changed) {
                (Some(_), true) => "CHANGED (checksum differs: run refuses to start)".to_owned(),
                (Some(at), false) => format!(
                    "applied at {} ms since the epoch, in {} ms",
                    at,
                    state.duration_ms.unwrap_or(0)
                ),
                (None, _) => "pending".to_owned(),
            };
            println!(
                "{:04} {}\t{}\t{}",
                state.version,
                state.name,
                &state.checksum[..12.min(state.checksum.len())],
                applied
            );
        }
        database.close().await;
        Ok(())
    })
}
