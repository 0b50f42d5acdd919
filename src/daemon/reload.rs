//! SIGHUP: re-read and validate the config file (a bad one is refused and the old one kept), re-sync
//! the config's rules, record it in the audit trail. Provider connections and limits take effect
//! at the next start.

use anyhow::Result;

use super::RunOptions;
use crate::config::Config;
use crate::store::AsyncStore;

pub(super) async fn reload(options: &RunOptions, store: &AsyncStore, now: i64) -> Result<Config> {
    let Some(path) = &options.config_path else {
        anyhow::bail!("no config file was given at start; nothing to reload");
    };
    let mut config = Config::load(path)?;
    if let Some(db) = &options.db_override {
        config.database = db.clone();
    }
    let rules = config.rules.clone();
    let source = config.source.as_ref().map(|p| p.display().to_string());
    store
        .call(move |s| -> Result<()> {
            s.sync_config_rules(&rules, source, crate::store::rules::ConfigSync::Reload, now)?;
            Ok(())
        })
        .await?;
    Ok(config)
}
