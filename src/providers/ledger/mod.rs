//! A third provider that exists only in `cargo test`: the proof of the SPEC's rule that adding a
//! provider touches its own folder and one registry line (`#[cfg(test)]` in
//! [`super::registry::REGISTRY`]), nothing else. Its test drives it through the same paths a
//! real provider takes: a `[providers.ledger]` table in a config file, a feeder's `sessions` rows
//! accepted by the schema, an erasure request resolved and drained by `run --once`, the audit
//! chain and the certificate.
//!
//! The "remote" is an in-process book of chats, named by the config (`book = "..."`), with its
//! own ID rule (IDs start with `L-`) and its own answer: a book that is `closed` refuses with a
//! pause, as an auth failure would.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use serde::Deserialize;

use super::gate::{Gate, Pass};
use super::registry::Registration;
use super::{
    Action, BuildError, ChatSink, DeleteBatch, DeleteOutcome, ListedChat, Operation, Presence,
    Provider, ProviderError, Settings, SharedProvider,
};
use crate::fields::{self, Problems};
use crate::model::ProviderKind;
use crate::secret::SecretRef;

impl ProviderKind {
    /// The test-only ledger.
    pub const LEDGER: ProviderKind = ProviderKind::named("ledger");
}
const KIND: ProviderKind = ProviderKind::LEDGER;

pub static REGISTRATION: Registration = Registration {
    kind: KIND,
    settings: parse,
    check_scope: |scope| {
        if scope.starts_with("shelf-") {
            Ok(())
        } else {
            Err(format!(
                "scope \"{scope}\" is not a ledger shelf (shelf-...)"
            ))
        }
    },
};

/// A book of chats: scope → (chat id → owner), and every delete call it received.
#[derive(Debug, Default)]
pub struct Book {
    pub chats: BTreeMap<String, BTreeMap<String, String>>,
    pub deletes: Vec<DeleteBatch>,
    pub closed: bool,
}

type Shared = Arc<Mutex<Book>>;

/// The books, by name: the test and the client reach the same one through the config.
pub fn book(name: &str) -> Shared {
    static BOOKS: OnceLock<Mutex<HashMap<String, Shared>>> = OnceLock::new();
    BOOKS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone()
}

#[derive(Debug, Clone, PartialEq)]
pub struct LedgerConfig {
    pub book: String,
    pub token: SecretRef,
}

#[derive(Debug, Deserialize)]
struct Raw {
    book: Option<String>,
    token: Option<String>,
}

fn parse(table: toml::Table, p: &mut Problems) -> Option<Arc<dyn Settings>> {
    let raw: Raw = crate::fields::table(table, "providers.ledger", p)?;
    let book = fields::required(p, "providers.ledger.book", raw.book);
    let token = fields::secret(p, "providers.ledger.token", raw.token.as_deref())?;
    Some(Arc::new(LedgerConfig { book, token }))
}

impl Settings for LedgerConfig {
    fn kind(&self) -> ProviderKind {
        KIND
    }
    fn secrets(&self) -> Vec<(String, &SecretRef)> {
        vec![("providers.ledger.token".into(), &self.token)]
    }
    fn describe(&self) -> String {
        format!("book {} (token from {})", self.book, self.token)
    }
    fn build(&self, gate: Arc<Gate>) -> Result<SharedProvider, BuildError> {
        self.token.read()?;
        Ok(Arc::new(Ledger {
            book: book(&self.book),
            batch: gate.limits().batch_size,
            gate,
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Ledger {
    book: Shared,
    batch: usize,
    gate: Arc<Gate>,
}

impl Ledger {
    fn open(&self, op: Operation) -> Result<std::sync::MutexGuard<'_, Book>, ProviderError> {
        let book = self.book.lock().unwrap();
        if book.closed {
            return Err(ProviderError::new(
                KIND,
                op,
                Action::Pause("the ledger is closed; open it again".into()),
                "closed",
            ));
        }
        Ok(book)
    }
}

#[async_trait]
impl Provider for Ledger {
    fn kind(&self) -> ProviderKind {
        KIND
    }
    fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
    fn max_batch(&self) -> usize {
        self.batch
    }
    fn check_id(&self, id: &str) -> Result<(), String> {
        if id.starts_with("L-") {
            Ok(())
        } else {
            Err("a ledger chat ID starts with L-".into())
        }
    }
    async fn delete(
        &self,
        pass: &mut Pass,
        batch: &DeleteBatch,
    ) -> Result<DeleteOutcome, ProviderError> {
        pass.call(Operation::Delete, async {
            let mut book = self.open(Operation::Delete)?;
            book.deletes.push(batch.clone());
            if let Some(shelf) = book.chats.get_mut(&batch.scope) {
                for id in &batch.ids {
                    shelf.remove(id);
                }
            }
            Ok(DeleteOutcome::AllDeleted)
        })
        .await
    }
    async fn list_scope(&self, scope: &str, sink: ChatSink<'_>) -> Result<(), ProviderError> {
        let ids: Vec<String> = self
            .gate
            .call(Operation::List, async {
                let book = self.open(Operation::List)?;
                Ok(book
                    .chats
                    .get(scope)
                    .into_iter()
                    .flat_map(|s| s.keys().cloned())
                    .collect())
            })
            .await?;
        for id in ids {
            sink(ListedChat {
                scope: scope.into(),
                session_id: id,
                created_at: None,
                repo_id: None,
            });
        }
        Ok(())
    }
    async fn list_subject(&self, _: &str, _: &str, _: ChatSink<'_>) -> Result<bool, ProviderError> {
        Ok(false)
    }
    fn subject_scopes(&self) -> Vec<String> {
        Vec::new()
    }
    async fn lookup(
        &self,
        scope: &str,
        _: Option<&str>,
        id: &str,
    ) -> Result<Presence, ProviderError> {
        self.gate
            .call(Operation::List, async {
                let book = self.open(Operation::List)?;
                Ok(
                    match book.chats.get(scope).is_some_and(|s| s.contains_key(id)) {
                        true => Presence::Present,
                        false => Presence::Absent,
                    },
                )
            })
            .await
    }
    async fn read_back(
        &self,
        scope: &str,
        chats: &[super::ReadBackChat],
        share: f64,
    ) -> Vec<Result<Presence, ProviderError>> {
        let shelf = async {
            let mut pass = self.gate.enter_background(Operation::List, share).await?;
            pass.call(Operation::List, async {
                let book = self.open(Operation::List)?;
                Ok(book.chats.get(scope).cloned().unwrap_or_default())
            })
            .await
        }
        .await;
        chats
            .iter()
            .map(|c| match &shelf {
                Ok(s) if s.contains_key(&c.session_id) => Ok(Presence::Present),
                Ok(_) => Ok(Presence::Absent),
                Err(e) => Err(e.repeated()),
            })
            .collect()
    }
    async fn doctor(&self, known: &[String]) -> super::probe::Checkup {
        let scope = known.first().cloned().unwrap_or_else(|| "shelf".into());
        let r = self.list_scope(&scope, &mut |_| {}).await;
        super::probe::Checkup {
            provider: KIND,
            address: "the in-memory ledger".into(),
            checks: vec![super::probe::Check::of(
                format!("list shelf {scope}"),
                &r,
                "the ledger",
            )],
            notes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::store::Store;

    const SHELF: &str = "shelf-1";

    /// The whole way down for a provider the centre never heard of: config table, schema,
    /// resolution, deletion, audit and certificate, with decoys that must stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provider_added_in_one_folder_erases_a_persons_chats_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "ledger-token").unwrap();
        let db = dir.path().join("forgetd.db");
        let text = format!(
            "[database]\npath = \"{}\"\n[providers.ledger]\nbook = \"end-to-end\"\ntoken = \"file:{}\"\nbatch_size = 2\n",
            db.display(),
            token.display()
        );
        let config = Config::parse(&text, "ledger.toml").unwrap();
        let configured = config.provider(KIND).expect("the ledger is configured");
        assert_eq!(configured.limits.batch_size, 2);
        assert!(configured.settings.describe().contains("end-to-end"));
        assert!(!configured.settings.describe().contains("ledger-token"));

        let remote = book("end-to-end");
        {
            let mut b = remote.lock().unwrap();
            for (id, owner) in [
                ("L-1", "ann"),
                ("L-2", "ann"),
                ("L-3", "ann"),
                ("L-9", "ben"),
            ] {
                b.chats
                    .entry(SHELF.into())
                    .or_default()
                    .insert(id.into(), owner.into());
            }
            // The same ID on another shelf is another chat.
            b.chats
                .entry("shelf-2".into())
                .or_default()
                .insert("L-1".into(), "ben".into());
        }
        // A feeder writes the inventory and the request with plain SQL, as for any provider.
        let store = Store::open(&db).unwrap();
        assert!(
            store
                .provider_keys()
                .unwrap()
                .contains(&"ledger".to_string())
        );
        drop(store);
        let feeder = rusqlite::Connection::open(&db).unwrap();
        feeder
            .execute_batch(
                "INSERT INTO sessions (provider, scope, session_id, subject) VALUES
                   ('ledger', 'shelf-1', 'L-1', 'ann'), ('ledger', 'shelf-1', 'L-2', 'ann'),
                   ('ledger', 'shelf-1', 'L-3', 'ann'), ('ledger', 'shelf-1', 'L-9', 'ben'),
                   ('ledger', 'shelf-2', 'L-1', 'ben');
                 INSERT INTO erasure_requests (subject, external_ref) VALUES ('ann', 'T-1');",
            )
            .unwrap();
        let refused = feeder
            .execute(
                "INSERT INTO sessions (provider, scope, session_id) VALUES ('ledgr', 's', 'L-4')",
                [],
            )
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("sessions_provider_must_be_a_key_of_providers"),
            "{refused}"
        );
        drop(feeder);

        let clock = ManualClock::new(1_800_000_000_000);
        let prepared = crate::daemon::Daemon::build(config, Arc::new(clock)).unwrap();
        let report = prepared.run_once().await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        drop(prepared);

        let b = remote.lock().unwrap();
        assert_eq!(
            b.chats[SHELF].keys().collect::<Vec<_>>(),
            ["L-9"],
            "ann's chats gone, ben's stays"
        );
        assert!(
            b.chats["shelf-2"].contains_key("L-1"),
            "the same ID on another shelf stays"
        );
        let named: Vec<(&str, &str)> = b
            .deletes
            .iter()
            .flat_map(|d| d.ids.iter().map(move |i| (d.scope.as_str(), i.as_str())))
            .collect();
        assert_eq!(named.len(), 3, "each chat named once: {named:?}");
        assert!(named.iter().all(|(s, i)| *s == SHELF && *i != "L-9"));
        assert!(
            b.deletes.iter().all(|d| d.ids.len() <= 2),
            "batch_size from its table"
        );
        drop(b);

        let store = Store::open(&db).unwrap();
        assert!(store.verify_audit().unwrap().broken.is_none());
        let record = store.request_record(1).unwrap();
        assert_eq!(record.state, "complete");
        let cert = crate::certificate::Certificate::build(&store, 1).unwrap();
        let text = serde_json::to_string(&cert).unwrap();
        assert!(
            text.contains("\"ledger\"") && text.contains("L-3"),
            "{text}"
        );
    }

    #[test]
    fn its_table_is_checked_by_its_own_rules() {
        let p = match Config::parse(
            "[providers.ledger]\nbook = \"\"\ntoken = \"plain-secret\"\ncolour = 1\n",
            "t",
        ) {
            Err(crate::config::ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("{other:?}"),
        };
        assert!(
            p.iter().any(|m| m.contains("providers.ledger.colour")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("providers.ledger.book")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("providers.ledger.token")),
            "{p:?}"
        );
        assert!(!p.iter().any(|m| m.contains("plain-secret")), "{p:?}");
        assert_eq!(
            ProviderKind::LEDGER.check_scope("nope").unwrap_err(),
            "scope \"nope\" is not a ledger shelf (shelf-...)"
        );
    }
}
