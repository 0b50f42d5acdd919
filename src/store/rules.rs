//! Retention rules in the database: listing, adding and removing CLI rules, syncing the config
//! file's rules, and the approval that releases a run held by its `max_deletions` ceiling.
//!
//! Ownership: a rule from the config file (`origin = 'config'`) is changed in the file; `remove`
//! refuses it and says so. A sync replaces the config rules with the file's, leaving CLI rules
//! alone. A rule's run state (`rule_state`) is kept across syncs so a reload never forgets when a
//! rule last ran; changing a rule in the file clears a pending approval (the operator acted).

use std::time::Duration;

use super::Tx;
use super::db::Sql;
use crate::args;
use serde::Serialize;

use super::{Result, Store, StoreError};
use crate::config::RuleSpec;
use crate::model::ProviderKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleOrigin {
    Config,
    Cli,
}

impl RuleOrigin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Cli => "cli",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleRow {
    pub name: String,
    pub provider: ProviderKind,
    pub scope: String,
    pub max_age: String,
    #[serde(skip)]
    pub max_age_secs: i64,
    pub schedule: String,
    pub timezone: String,
    pub discover: bool,
    pub max_deletions: u64,
    pub origin: RuleOrigin,
    pub last_run_at: Option<i64>,
    /// Set when the last run matched more than max_deletions and waits for `rules approve`.
    pub awaiting_approval: Option<i64>,
    /// How many chats the held run matched (what `rules list` shows and an approval releases).
    pub awaiting_matched: Option<u64>,
    pub approved: bool,
    /// An approval releases a run of at most this many chats; a run that matches more waits
    /// for approval again.
    pub approved_up_to: Option<u64>,
    pub created_at: i64,
}

impl RuleRow {
    pub fn spec(&self) -> RuleSpec {
        RuleSpec {
            name: self.name.clone(),
            provider: self.provider,
            scope: self.scope.clone(),
            max_age: Duration::from_secs(self.max_age_secs as u64),
            schedule: self.schedule.clone(),
            timezone: self.timezone.clone(),
            discover: self.discover,
            max_deletions: self.max_deletions,
        }
    }
}

/// provider, scope, max_age_secs, schedule, timezone, discover, max_deletions, origin
type RuleColumns = (String, String, i64, String, String, i64, i64, String);

fn upsert(tx: &Tx<'_>, r: &RuleSpec, origin: RuleOrigin, now: i64) -> Result<bool> {
    // Returns true when the rule is new or changed.
    let existing: Option<RuleColumns> = tx.row_opt(
        "SELECT provider, scope, max_age_secs, schedule, timezone, discover, max_deletions, origin FROM rules WHERE name = ?1",
        args![r.name],
        |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?, x.get(4)?, x.get(5)?, x.get(6)?, x.get(7)?)),
    )?;
    let new = (
        r.provider.as_str().to_string(),
        r.scope.clone(),
        r.max_age.as_secs() as i64,
        r.schedule.clone(),
        r.timezone.clone(),
        r.discover as i64,
        r.max_deletions as i64,
        origin.as_str().to_string(),
    );
    if existing.as_ref() == Some(&new) {
        return Ok(false);
    }
    tx.exec(
        "INSERT INTO rules (name, provider, scope, max_age_secs, schedule, timezone, discover, max_deletions, origin, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
         ON CONFLICT (name) DO UPDATE SET provider = excluded.provider, scope = excluded.scope,
             max_age_secs = excluded.max_age_secs, schedule = excluded.schedule, timezone = excluded.timezone,
             discover = excluded.discover, max_deletions = excluded.max_deletions, origin = excluded.origin,
             updated_at = excluded.updated_at",
        args![r.name, new.0, new.1, new.2, new.3, new.4, new.5, new.6, new.7, now],
    )?;
    tx.exec(
        "INSERT INTO rule_state (rule_name) VALUES (?1) ON CONFLICT DO NOTHING",
        args![r.name],
    )?;
    if existing.is_some() {
        // A changed rule is the operator acting: a held run is released to be recomputed.
        tx.exec(
            "UPDATE rule_state SET awaiting_approval = NULL, awaiting_matched = NULL, approved = 0,
                 approved_up_to = NULL WHERE rule_name = ?1",
            args![r.name],
        )?;
    }
    Ok(true)
}

impl Store {
    pub fn list_rules(&self) -> Result<Vec<RuleRow>> {
        self.rows(
            "SELECT r.name, r.provider, r.scope, r.max_age_secs, r.schedule, r.timezone, r.discover,
                    r.max_deletions, r.origin, s.last_run_at, s.awaiting_approval, coalesce(s.approved, 0), r.created_at,
                    s.awaiting_matched, s.approved_up_to
             FROM rules r LEFT JOIN rule_state s ON s.rule_name = r.name ORDER BY r.name",
            args![],
            |r| {
                let secs: i64 = r.get(3)?;
                let origin: String = r.get(8)?;
                Ok(RuleRow {
                    name: r.get(0)?,
                    // A key this binary does not serve is an error, never another provider.
                    provider: r.get(1)?,
                    scope: r.get(2)?,
                    max_age: humantime::format_duration(Duration::from_secs(secs as u64))
                        .to_string(),
                    max_age_secs: secs,
                    schedule: r.get(4)?,
                    timezone: r.get(5)?,
                    discover: r.get(6)?,
                    max_deletions: r.get(7)?,
                    origin: if origin == "config" {
                        RuleOrigin::Config
                    } else {
                        RuleOrigin::Cli
                    },
                    last_run_at: r.get(9)?,
                    awaiting_approval: r.get(10)?,
                    approved: r.get(11)?,
                    created_at: r.get(12)?,
                    awaiting_matched: r.get::<Option<i64>>(13)?.map(|n| n.max(0) as u64),
                    approved_up_to: r.get::<Option<i64>>(14)?.map(|n| n.max(0) as u64),
                })
            },
        )
    }

    pub fn get_rule(&self, name: &str) -> Result<RuleRow> {
        self.list_rules()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| StoreError::NotFound(format!("no rule named \"{name}\"")))
    }

    /// Adds a CLI-owned rule. A name taken by a config rule is refused.
    pub fn add_rule(&mut self, r: &RuleSpec, now: i64) -> Result<()> {
        self.write(|tx| {
            let origin: Option<String> = tx.row_opt(
                "SELECT origin FROM rules WHERE name = ?1",
                args![&r.name],
                |x| x.get(0),
            )?;
            if origin.is_some() {
                return Err(StoreError::Invalid(format!(
                    "a rule named \"{}\" exists already (remove it first, or pick another name)",
                    r.name
                )));
            }
            upsert(tx, r, RuleOrigin::Cli, now)?;
            let event = crate::audit::Event::RuleAdded(crate::audit::RuleAdded {
                rule: r.name.clone(),
                provider: r.provider.to_string(),
                scope: r.scope.clone(),
                max_age: r.max_age.as_secs(),
                schedule: r.schedule.clone(),
                timezone: r.timezone.clone(),
                discover: r.discover,
                max_deletions: r.max_deletions,
            });
            super::audit::append(tx, now, None, &event)?;
            Ok(())
        })
    }

    /// Removes a CLI-owned rule.
    pub fn remove_rule(&mut self, name: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            let origin: Option<String> = tx.row_opt(
                "SELECT origin FROM rules WHERE name = ?1",
                args![name],
                |x| x.get(0),
            )?;
            match origin.as_deref() {
                None => Err(StoreError::NotFound(format!("no rule named \"{name}\""))),
                Some("config") => Err(StoreError::Invalid(format!(
                    "rule \"{name}\" comes from the config file: remove it there and reload"
                ))),
                Some(_) => {
                    tx.exec("DELETE FROM rules WHERE name = ?1", args![name])?;
                    tx.exec("DELETE FROM rule_state WHERE rule_name = ?1", args![name])?;
                    let event = crate::audit::Event::RuleRemoved(crate::audit::RuleNamed {
                        rule: name.to_string(),
                    });
                    super::audit::append(tx, now, None, &event)?;
                    Ok(())
                }
            }
        })
    }

    /// Every recorded rule run, oldest first: (rule, started_at).
    pub fn rule_runs(&self) -> Result<Vec<(String, i64)>> {
        self.rows(
            "SELECT rule_name, started_at FROM rule_runs ORDER BY id",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Records a failed run attempt as the rule's last run, so it waits for its next schedule.
    pub fn mark_rule_attempt(&mut self, name: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO rule_state (rule_name, last_run_at) VALUES (?1, ?2)
                 ON CONFLICT (rule_name) DO UPDATE SET last_run_at = excluded.last_run_at",
                args![name, now],
            )?;
            Ok(())
        })
    }

    /// Releases a run held by the rule's ceiling: its next run deletes what it matches, as long as
    /// that is no more than the held run showed; a bigger run waits for approval again.
    pub fn approve_rule(&mut self, name: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            let waiting: Option<Option<i64>> = tx.row_opt(
                "SELECT s.awaiting_approval FROM rules r LEFT JOIN rule_state s ON s.rule_name = r.name WHERE r.name = ?1",
                args![name],
                |x| x.get(0),
            )?;
            match waiting {
                None => Err(StoreError::NotFound(format!("no rule named \"{name}\""))),
                Some(None) => Err(StoreError::Invalid(format!(
                    "rule \"{name}\" has no run waiting for approval"
                ))),
                Some(Some(_)) => {
                    let up_to: Option<i64> = tx.row(
                        "UPDATE rule_state SET approved = 1, approved_up_to = awaiting_matched WHERE rule_name = ?1
                         RETURNING approved_up_to",
                        args![name],
                        |x| x.get(0),
                    )?;
                    let event = crate::audit::Event::RuleApproved(crate::audit::RuleApproved {
                        rule: name.to_string(),
                        up_to,
                    });
                    super::audit::append(tx, now, None, &event)?;
                    Ok(())
                }
            }
        })
    }

    /// Makes the config rules in the database exactly `rules`; CLI rules are untouched (a config
    /// rule whose name a CLI rule holds takes it over: the file wins). Returns (added or changed,
    /// removed) names. Recorded in the same transaction: `config.loaded` at the daemon's start,
    /// `config.reloaded` on SIGHUP, and on a command's read of the file when it changed a rule.
    pub fn sync_config_rules(
        &mut self,
        rules: &[RuleSpec],
        source: Option<String>,
        sync: ConfigSync,
        now: i64,
    ) -> Result<(Vec<String>, Vec<String>)> {
        self.write(|tx| {
            let mut changed = Vec::new();
            for r in rules {
                if upsert(tx, r, RuleOrigin::Config, now)? {
                    changed.push(r.name.clone());
                }
            }
            let existing: Vec<String> = tx.rows(
                "SELECT name FROM rules WHERE origin = 'config'",
                args![],
                |r| r.get(0),
            )?;
            let mut removed = Vec::new();
            for name in existing {
                if !rules.iter().any(|r| r.name == name) {
                    tx.exec("DELETE FROM rules WHERE name = ?1", args![name])?;
                    removed.push(name);
                }
            }
            let change = crate::audit::ConfigChange {
                source,
                rules_changed: changed.clone(),
                rules_removed: removed.clone(),
            };
            let event = match sync {
                ConfigSync::Start => Some(crate::audit::Event::ConfigLoaded(change)),
                ConfigSync::Reload => Some(crate::audit::Event::ConfigReloaded(change)),
                ConfigSync::Command if changed.is_empty() && removed.is_empty() => None,
                ConfigSync::Command => Some(crate::audit::Event::ConfigReloaded(change)),
            };
            if let Some(event) = event {
                super::audit::append(tx, now, None, &event)?;
            }
            Ok((changed, removed))
        })
    }
}

/// Why the config file's rules are being synced into the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSync {
    /// The daemon (or `run --once`) started.
    Start,
    /// SIGHUP.
    Reload,
    /// A CLI command read the file (recorded only when it changed a rule).
    Command,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    fn spec(name: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            provider: ProviderKind::CONVAI,
            scope: "*".into(),
            max_age: Duration::from_secs(86400),
            schedule: "0 3 * * *".into(),
            timezone: "UTC".into(),
            discover: false,
            max_deletions: 10,
        }
    }

    #[test]
    fn config_rules_are_owned_by_the_file_and_cli_rules_survive_sync() {
        let (_d, mut s) = temp_store();
        s.sync_config_rules(&[spec("file-rule")], None, ConfigSync::Command, 1)
            .unwrap();
        s.add_rule(&spec("cli-rule"), 1).unwrap();
        let err = s.remove_rule("file-rule", 0).unwrap_err();
        assert!(err.to_string().contains("config file"), "{err}");
        let (_, removed) = s
            .sync_config_rules(&[], None, ConfigSync::Command, 2)
            .unwrap();
        assert_eq!(removed, vec!["file-rule".to_string()]);
        let names: Vec<String> = s
            .list_rules()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, vec!["cli-rule".to_string()]);
        s.remove_rule("cli-rule", 0).unwrap();
        assert!(s.list_rules().unwrap().is_empty());
    }

    #[test]
    fn approve_needs_a_waiting_run() {
        let (_d, mut s) = temp_store();
        s.add_rule(&spec("r"), 1).unwrap();
        assert!(s.approve_rule("r", 0).is_err());
        assert!(matches!(
            s.approve_rule("nope", 0),
            Err(StoreError::NotFound(_))
        ));
    }
}
