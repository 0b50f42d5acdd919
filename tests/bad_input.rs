//! Property tests for everything that reads outside input: the config parser, the CSV/JSON-lines
//! importer, and both providers' answer parsers. None may panic; each bad input gets an error
//! that says what is wrong, and a rejected import leaves nothing behind.

use forgetd::config::{Config, ConfigError};
use forgetd::providers::convai::parse_list;
use forgetd::providers::koosearch::{parse_batch_answer, parse_page};
use forgetd::store::Store;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("database.path"),
        Just("daemon.deadline"),
        Just("daemon.lease"),
        Just("daemon.shutdown_timeout"),
        Just("retry.base_delay"),
        Just("retry.max_delay"),
        Just("retry.max_attempts"),
        Just("retry.give_up_after"),
        Just("http.listen"),
        Just("audit.subject_key"),
        Just("providers.convai.base_url"),
        Just("providers.convai.api_key"),
        Just("providers.convai.batch_size"),
        Just("providers.convai.concurrency"),
        Just("providers.convai.requests_per_second"),
        Just("providers.koosearch.endpoint"),
        Just("providers.koosearch.project_id"),
        Just("providers.koosearch.applications"),
        Just("providers.koosearch.token"),
        Just("providers.koosearch.iam.password"),
        Just("daemon.nonsense"),
        Just("whatever.else"),
    ]
    .prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9:/._ -]{0,20}".prop_map(|s| format!("{s:?}")),
        Just("\"30d\"".to_string()),
        Just("\"env:X\"".to_string()),
        Just("\"https://h.example\"".to_string()),
        Just("[\"a\", 1]".to_string()),
        Just("\"-5s\"".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = Config::parse(&text, "fuzz.toml");
    }

    /// Plausible files with random keys and values: accepted, or refused naming a key or the line.
    #[test]
    fn config_parser_names_what_is_wrong(pairs in proptest::collection::vec((key(), value()), 0..8)) {
        let mut text = String::new();
        for (k, v) in &pairs {
            let (table, leaf) = k.rsplit_once('.').unwrap();
            text.push_str(&format!("[{table}]\n{leaf} = {v}\n"));
        }
        match Config::parse(&text, "fuzz.toml") {
            Ok(_) => {}
            Err(ConfigError::Invalid { problems, .. }) => {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    prop_assert!(p.contains('`') || p.contains("rules["), "problem without a key: {p}");
                }
            }
            Err(ConfigError::Syntax { .. }) => {} // duplicate tables and type errors: serde's message, with the line
            Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
        }
    }

    #[test]
    fn importer_never_panics_and_a_refused_file_leaves_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("f.db")).unwrap();
        let result = s.import_sessions(&bytes[..], |_, _| {});
        let n: i64 = s.connection().query_row("SELECT count(*) FROM sessions", [], |r| r.get(0)).unwrap();
        match result {
            Ok(r) => prop_assert_eq!(r.inserted as i64, n),
            Err(e) => {
                prop_assert_eq!(n, 0);
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// CSV built from plausible pieces, hostile ones included: imported verbatim or refused by line.
    #[test]
    fn hostile_csv_rows_are_stored_verbatim_or_refused_by_line(rows in proptest::collection::vec(
        (prop_oneof![Just("convai"), Just("koosearch"), Just("openai"), Just("")],
         "[a-z0-9_-]{0,70}",
         prop_oneof!["[A-Za-z0-9_-]{1,64}", "[^\n\r\",]{0,80}", Just("x'); DROP TABLE sessions; --".to_string()), Just("-1".to_string())],
         prop_oneof![Just(String::new()), "[a-z ]{0,10}", Just("\u{7}\u{1b}[31m".to_string())]),
        1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("f.db")).unwrap();
        let mut csv = String::from("provider,scope,session_id,subject\n");
        for (p, scope, id, subject) in &rows {
            csv.push_str(&format!("{p},{scope},{id},{subject}\n"));
        }
        match s.import_sessions(csv.as_bytes(), |_, _| {}) {
            Ok(r) => {
                let ids: Vec<String> = s.connection().prepare("SELECT session_id FROM sessions ORDER BY id").unwrap()
                    .query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
                prop_assert_eq!(ids.len() as u64, r.inserted);
                for id in ids {
                    prop_assert!(rows.iter().any(|(_, _, i, _)| *i == id), "stored verbatim: {id:?}");
                }
            }
            Err(e) => {
                let text = e.to_string();
                // One bad line: "line N: ..."; more: "K bad lines; ...", then "  line N: ..." each.
                prop_assert!(text.starts_with("line ") || text.contains(" bad lines; nothing was imported:\n  line "), "{text}");
                prop_assert_eq!(s.connection().query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
            }
        }
    }

    #[test]
    fn koosearch_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..200) {
        let _ = parse_batch_answer(&bytes, n);
        let _ = parse_page("app", &bytes);
    }

    #[test]
    fn koosearch_parsers_read_json_of_any_shape(v in json_value(3)) {
        let body = v.to_string();
        let _ = parse_batch_answer(body.as_bytes(), 3);
        if let Ok(page) = parse_page("app", body.as_bytes()) {
            prop_assert!(page.chats.len() <= page.records);
        }
    }

    #[test]
    fn convai_list_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_list(&bytes[..], "c", |_| true);
    }

    #[test]
    fn convai_list_parser_reads_json_of_any_shape(v in json_value(3)) {
        let body = v.to_string();
        let mut n = 0;
        let r = parse_list(body.as_bytes(), "c", |_| { n += 1; true });
        if !v.is_array() {
            prop_assert!(r.is_err(), "only an array is a list");
        }
    }
}

fn json_value(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9:. -]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("sessionID"),
            Just("date"),
            Just("time"),
            Just("chat_id"),
            Just("records"),
            Just("pages"),
            Just("total_count"),
            Just("deletedCount"),
            Just("create_date_time"),
            Just("is_del")
        ]
        .prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("25-09-2024")),
        Just(serde_json::Value::from("20:52:57")),
    ];
    leaf.prop_recursive(depth, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("sessionID"),
                    Just("date"),
                    Just("time"),
                    Just("chat_id"),
                    Just("records"),
                    Just("pages"),
                    Just("total_count"),
                    Just("totalCount"),
                    Just("deleted_count"),
                    Just("deletedCount"),
                    Just("create_date_time"),
                    Just("is_del"),
                    Just("knowledge_repo_id"),
                    Just("x")
                ]
                .prop_map(str::to_string),
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
