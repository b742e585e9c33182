//! The feed of admin changes on Postgres: the triggers of the
//! `change_notify` migration send `NOTIFY gateway_changes, '<table>'` when a
//! change to keys, tenants, backends, aliases, policies or privacy rules
//! commits, whoever made it (the admin CLI, another gateway, a manual
//! edit). SQLite has no such feed.

use sqlx::postgres::PgListener;

use super::StoreError;

/// The channel the triggers notify.
pub const CHANNEL: &str = "gateway_changes";

/// A dedicated connection listening on [`CHANNEL`].
pub struct ChangeFeed {
    listener: PgListener,
}

/// What the feed said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A change to this table committed.
    Table(String),
    /// The connection was lost and has been remade: changes in between
    /// may have been missed.
    Reconnected,
}

impl ChangeFeed {
    /// Connects to the Postgres at `url` and listens.
    pub async fn connect(url: &str) -> Result<ChangeFeed, StoreError> {
        let mut listener = PgListener::connect(url)
            .await
            .map_err(StoreError::unavailable)?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(ChangeFeed { listener })
    }

    /// The next change. After a lost connection the next call reconnects
    /// (and listens again) before waiting.
    pub async fn next(&mut self) -> Result<Change, StoreError> {
        match self.listener.try_recv().await {
            Ok(Some(n)) => Ok(Change::Table(n.payload().to_owned())),
            Ok(None) => Ok(Change::Reconnected),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }
}
