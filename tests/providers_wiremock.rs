//! Request shapes and answer handling, tested with wiremock fixtures written from the seed pages'
//! own examples (../shared/seeds/) and providers.md — not against our simulator, which could share
//! a misreading of the docs with the client.

use std::sync::Arc;
use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::config::SecretRef;
use forgetd::model::ProviderKind;
use forgetd::providers::convai::{ConvaiClient, ConvaiConfig};
use forgetd::providers::gate::Gate;
use forgetd::providers::koosearch::{IamConfig, KooSearchAuth, KooSearchClient, KooSearchConfig};
use forgetd::providers::{
    Action, DeleteBatch, DeleteOutcome, ListedChat, Provider, ProviderLimits,
};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PROJECT: &str = "b25446daeb1a41a7953c5deba2b2677a";

/// Whether an action is the expected one.
type Check = fn(&Action) -> bool;
const APP: &str = "be9b19bf-4865-4fb8-b9f8-2fd1fea98d76";
const BATCH_PATH: &str = "/v1/b25446daeb1a41a7953c5deba2b2677a/applications/be9b19bf-4865-4fb8-b9f8-2fd1fea98d76/uni-search/chat-history/batch";

fn limits() -> ProviderLimits {
    ProviderLimits {
        batch_size: 100,
        concurrency: 2,
        requests_per_second: None,
        timeout: Duration::from_secs(5),
    }
}

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> SecretRef {
    let p = dir.path().join(name);
    std::fs::write(&p, value).unwrap();
    SecretRef::File(p)
}

fn convai(server: &MockServer, dir: &tempfile::TempDir) -> ConvaiClient {
    ConvaiClient::new(
        &ConvaiConfig {
            base_url: server.uri().parse().unwrap(),
            api_key: secret_file(dir, "k", "<Your-API-Key>"),
        },
        gate(ProviderKind::CONVAI),
    )
    .unwrap()
}

fn gate(kind: ProviderKind) -> Arc<Gate> {
    Gate::new(
        kind,
        &limits(),
        Duration::from_secs(3600),
        Arc::new(SystemClock),
    )
}

fn koosearch(server: &MockServer, auth: KooSearchAuth) -> KooSearchClient {
    KooSearchClient::new(
        &KooSearchConfig {
            endpoint: server.uri().parse().unwrap(),
            project_id: PROJECT.into(),
            applications: vec![APP.into()],
            discover_by_user_name: true,
            auth,
            listing: Default::default(),
        },
        gate(ProviderKind::KOOSEARCH),
    )
    .unwrap()
}

fn batch(scope: &str, ids: &[&str], repo: Option<&str>) -> DeleteBatch {
    DeleteBatch {
        scope: scope.into(),
        repo_id: repo.map(Into::into),
        ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn convai_delete_sends_the_seed_request_and_reads_success_in_any_language() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The seed's cURL example: POST, CONVAI-API-KEY, JSON {"charID", "sessionIDs"}.
    Mock::given(method("POST"))
        .and(path("/character/chatHistory/delete"))
        .and(header("CONVAI-API-KEY", "<Your-API-Key>"))
        .and(header("Content-Type", "application/json"))
        .and(header(
            "User-Agent",
            concat!("forgetd/", env!("CARGO_PKG_VERSION")),
        ))
        .and(body_json(
            json!({"charID": "<Your-Character-Id>", "sessionIDs": ["<your-session-id-1>"]}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "删除成功"})))
        .expect(1)
        .mount(&server)
        .await;
    let c = convai(&server, &dir);
    let out = c
        .delete_alone(&batch(
            "<Your-Character-Id>",
            &["<your-session-id-1>"],
            None,
        ))
        .await
        .unwrap();
    assert_eq!(out, DeleteOutcome::AllDeleted);
    // Convai has no tokens: it never reports a refresh.
    assert_eq!(c.token_refreshes(), 0);
}

#[tokio::test]
async fn convai_error_statuses_map_to_what_to_do_next() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(ResponseTemplate, Check)> = vec![
        // the seed's 401 body
        (
            ResponseTemplate::new(401).set_body_json(json!({"ERROR": "Invalid API key provided."})),
            |a| matches!(a, Action::Pause(r) if r.contains("API key")),
        ),
        (
            ResponseTemplate::new(403).set_body_json(json!({"ERROR": "x"})),
            |a| matches!(a, Action::Pause(r) if r.contains("not enabled")),
        ),
        (
            ResponseTemplate::new(404),
            |a| matches!(a, Action::Pause(r) if r.contains("not enabled")),
        ),
        (
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "7")
                .set_body_json(
                    json!({"ERROR": "API rate limit exceeded. Please try again later."}),
                ),
            |a| *a == Action::RetryAfter(Duration::from_secs(7)),
        ),
        (
            ResponseTemplate::new(429).set_body_json(
                json!({"ERROR": "API rate limit exceeded. Please try again later."}),
            ),
            |a| *a == Action::Throttled,
        ),
        // A plan quota is not a rate: paused, with the reason, instead of retried.
        (
            ResponseTemplate::new(429)
                .set_body_json(json!({"ERROR": "API usage limit exceeded for current plan."})),
            |a| matches!(a, Action::Pause(r) if r.contains("plan quota is used up")),
        ),
        (
            ResponseTemplate::new(503).set_body_json(json!({"ERROR": "unavailable"})),
            |a| *a == Action::Retry,
        ),
        (
            ResponseTemplate::new(400).set_body_json(json!({"ERROR": "bad"})),
            |a| *a == Action::Rejected,
        ),
        (
            ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
            |a| *a == Action::Retry,
        ),
    ];
    for (i, (resp, check)) in cases.into_iter().enumerate() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/character/chatHistory/delete"))
            .respond_with(resp)
            .mount(&server)
            .await;
        let err = convai(&server, &dir)
            .delete_alone(&batch("c", &["s"], None))
            .await
            .unwrap_err();
        assert!(check(&err.action), "case {i}: {:?} ({err})", err.action);
        assert!(
            !err.to_string().contains("<Your-API-Key>"),
            "case {i}: the key leaked into {err}"
        );
    }
}

#[tokio::test]
async fn convai_list_reads_providers_md_example_as_utc() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("POST"))
        .and(path("/character/chatHistory/list"))
        .and(body_json(json!({"charID": "char-1", "limit": "-1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"sessionID": "0f8e1c2d3b4a59687766554433221100", "date": "25-09-2024", "time": "20:52:57", "is_added_to_memory": true},
            {"sessionID": "6b1e4d2a-0000-4000-8000-000000000001", "date": "24-09-2024", "time": "08:00:00", "is_added_to_memory": false}
        ])))
        .mount(&server)
        .await;
    let mut got: Vec<ListedChat> = Vec::new();
    convai(&server, &dir)
        .list_scope("char-1", &mut |c| got.push(c))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].created_at, Some(1_727_297_577)); // 2024-09-25T20:52:57Z
    assert_eq!(got[1].session_id, "6b1e4d2a-0000-4000-8000-000000000001");
}

#[tokio::test]
async fn koosearch_batch_delete_sends_the_seed_example_and_reads_its_camel_case_answer() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The seed's example request and response, verbatim.
    Mock::given(method("DELETE"))
        .and(path(BATCH_PATH))
        .and(header("X-Auth-Token", "MIIfixed"))
        .and(body_json(json!({
            "chat_ids": ["a51ce4e0-66b4-446c-8376-13deba725da5", "06611077-453e-4fd0-83f9-b635d8c84bc2"],
            "repo_ids": ["7741920e-7c1c-4a48-8555-c43b66153272", "7741920e-7c1c-4a48-8555-c43b66153272"]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"totalCount": 2, "deletedCount": 2})))
        .expect(1)
        .mount(&server)
        .await;
    let k = koosearch(
        &server,
        KooSearchAuth::Token(secret_file(&dir, "t", "MIIfixed")),
    );
    let out = k
        .delete_alone(&batch(
            APP,
            &[
                "a51ce4e0-66b4-446c-8376-13deba725da5",
                "06611077-453e-4fd0-83f9-b635d8c84bc2",
            ],
            Some("7741920e-7c1c-4a48-8555-c43b66153272"),
        ))
        .await
        .unwrap();
    assert_eq!(out, DeleteOutcome::AllDeleted);
}

#[tokio::test]
async fn koosearch_reads_the_documented_snake_case_and_reports_partial_without_guessing() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("DELETE"))
        .and(path(BATCH_PATH))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"total_count": 3, "deleted_count": 1})),
        )
        .mount(&server)
        .await;
    let k = koosearch(&server, KooSearchAuth::Token(secret_file(&dir, "t", "tok")));
    let out = k
        .delete_alone(&batch(APP, &["a", "b", "c"], None))
        .await
        .unwrap();
    assert_eq!(
        out,
        DeleteOutcome::Partial {
            total: 3,
            deleted: 1
        }
    );
    // without repo_ids in the request when the chats have none
    let req = &server.received_requests().await.unwrap()[0];
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body, json!({"chat_ids": ["a", "b", "c"]}));
}

#[tokio::test]
async fn koosearch_error_codes_map_to_what_to_do_next() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(ResponseTemplate, Check)> = vec![
        (
            ResponseTemplate::new(429).set_body_json(json!({"error_code": "APIG.0308", "error_msg": "The throttling threshold has been reached: policy user over ratelimit,limit:10,time:1 second"})),
            |a| *a == Action::Throttled,
        ),
        (ResponseTemplate::new(400).set_body_json(json!({"error_code": "kos.00010002", "error_msg": "参数错误"})), |a| *a == Action::Rejected),
        (ResponseTemplate::new(500).set_body_json(json!({"error_code": "KOS.00060002", "error_msg": "db"})), |a| *a == Action::Retry),
        (ResponseTemplate::new(403).set_body_json(json!({"error_code": "APIG.0302", "error_msg": "x"})), |a| matches!(a, Action::Pause(_))),
        (ResponseTemplate::new(404).set_body_json(json!({"error_code": "APIG.0101", "error_msg": "x"})), |a| matches!(a, Action::Pause(_))),
        (ResponseTemplate::new(200).set_body_json(json!({"unexpected": true})), |a| *a == Action::Retry),
        // a fixed token refused: nothing to refresh, pause
        (
            ResponseTemplate::new(401).set_body_json(json!({"error_code": "APIG.0301", "error_msg": "Incorrect IAM authentication information: token expires, expires_at: 2026-11-24T08:00:00Z"})),
            |a| matches!(a, Action::Pause(r) if r.contains("token")),
        ),
    ];
    for (i, (resp, check)) in cases.into_iter().enumerate() {
        let server = MockServer::start().await;
        Mock::given(method("DELETE"))
            .and(path(BATCH_PATH))
            .respond_with(resp)
            .mount(&server)
            .await;
        let k = koosearch(
            &server,
            KooSearchAuth::Token(secret_file(&dir, "t", "MIIsecret-token")),
        );
        let err = k.delete_alone(&batch(APP, &["a"], None)).await.unwrap_err();
        assert!(check(&err.action), "case {i}: {:?} ({err})", err.action);
        assert!(
            !format!("{err} {err:?}").contains("MIIsecret-token"),
            "case {i}: token leaked"
        );
    }
}

#[tokio::test]
async fn koosearch_lists_by_user_name_over_every_page() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let list_path = format!("/v1/{PROJECT}/applications/{APP}/uni-search/chat-history");
    for page in 1..=2 {
        let records: Vec<serde_json::Value> = (0..if page == 1 { 100 } else { 3 })
            .map(|i| json!({"chat_id": format!("c{page}-{i}"), "knowledge_repo_id": "", "chat_title": "t",
                            "create_date_time": "1731052459260", "project_id": PROJECT, "is_del": i == 0}))
            .collect();
        Mock::given(method("GET"))
            .and(path(list_path.as_str()))
            .and(query_param("user_name", "alice"))
            .and(query_param("page_num", page.to_string()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"total": 103, "size": records.len(), "pages": 2, "current": page, "records": records})))
            .expect(1)
            .mount(&server)
            .await;
    }
    let k = koosearch(&server, KooSearchAuth::Token(secret_file(&dir, "t", "tok")));
    let mut got = Vec::new();
    assert!(
        k.list_subject(APP, "alice", &mut |c| got.push(c))
            .await
            .unwrap()
    );
    assert_eq!(got.len(), 101, "two pages, deleted records skipped");
    assert_eq!(got[0].created_at, Some(1_731_052_459));
    assert_eq!(got[0].repo_id, None);
}

#[tokio::test]
async fn iam_password_auth_sends_the_documented_body_and_uses_the_subject_token() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("POST"))
        .and(path("/v3/auth/tokens"))
        .and(body_json(json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "forgetd", "password": "pa$$word", "domain": {"name": "my-account"}}}},
            "scope": {"project": {"name": "ap-southeast-3"}}}})))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("X-Subject-Token", "MIIfromIAM")
                .set_body_json(json!({"token": {"expires_at": "2099-11-24T08:00:00.000000Z", "issued_at": "2026-11-23T08:00:00.000000Z"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(BATCH_PATH))
        .and(header("X-Auth-Token", "MIIfromIAM"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"total_count": 1, "deleted_count": 1})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let k = koosearch(
        &server,
        KooSearchAuth::Iam(IamConfig {
            endpoint: server.uri().parse().unwrap(),
            domain: "my-account".into(),
            user: "forgetd".into(),
            password: secret_file(&dir, "p", "pa$$word"),
            project: "ap-southeast-3".into(),
        }),
    );
    for _ in 0..2 {
        assert_eq!(
            k.delete_alone(&batch(APP, &["a"], None)).await.unwrap(),
            DeleteOutcome::AllDeleted
        );
    }
    assert_eq!(k.token_refreshes(), 1, "the token is cached");
    assert!(!format!("{k:?}").contains("pa$$word"));
}

/// Reading deleted chats back (verification): a Convai session the list omits and whose details
/// are `[]` or 404 is absent; a session with turns is present even when the list omits it; a 404
/// on the details path is "no such session", never a pause; a listing that fails decides nothing.
#[tokio::test]
async fn convai_read_back_proves_absence_only_by_the_list_and_sees_turns_in_details() {
    use forgetd::providers::{Presence, ReadBackChat};
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("POST"))
        .and(path("/character/chatHistory/list"))
        .and(body_json(json!({"charID": "char-1", "limit": "-1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"sessionID": "listed", "date": "25-09-2024", "time": "20:52:57"}
        ])))
        .mount(&server)
        .await;
    let details = |sid: &str, answer: ResponseTemplate| {
        Mock::given(method("POST"))
            .and(path("/character/chatHistory/details"))
            .and(body_json(json!({"charID": "char-1", "sessionID": sid})))
            .respond_with(answer)
    };
    details("empty", ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    details(
        "not-found",
        ResponseTemplate::new(404).set_body_json(json!({"ERROR": "Session not found"})),
    )
    .mount(&server)
    .await;
    details(
        "turns",
        ResponseTemplate::new(200).set_body_json(json!([
            {"timestamp": "2024-09-25 19:54:59.124733", "interaction": [{"speaker": "User", "message": "hi"}]}
        ])),
    )
    .mount(&server)
    .await;
    details(
        "unclear",
        ResponseTemplate::new(200).set_body_json(json!({"status": "ok"})),
    )
    .mount(&server)
    .await;
    let client = convai(&server, &dir);
    let chats: Vec<ReadBackChat> = ["listed", "empty", "not-found", "turns", "unclear"]
        .iter()
        .map(|s| ReadBackChat {
            session_id: s.to_string(),
            repo_id: None,
        })
        .collect();
    let got = client.read_back("char-1", &chats, 0.2).await;
    assert_eq!(got[0].as_ref().ok(), Some(&Presence::Present));
    assert_eq!(got[1].as_ref().ok(), Some(&Presence::Absent));
    assert_eq!(got[2].as_ref().ok(), Some(&Presence::Absent));
    assert_eq!(
        got[3].as_ref().ok(),
        Some(&Presence::Present),
        "turns are readable"
    );
    assert!(
        matches!(&got[4], Err(e) if e.action == Action::Retry),
        "{:?}",
        got[4]
    );
    assert!(
        client.gate().paused().is_none(),
        "a 404 on details is not a pause"
    );

    // The list fails: nothing is decided, and no details call is spent.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/character/chatHistory/list"))
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({"ERROR": "unavailable"})))
        .mount(&server)
        .await;
    let client = convai(&server, &dir);
    let got = client.read_back("char-1", &chats[1..2], 0.2).await;
    assert!(
        matches!(&got[0], Err(e) if e.action == Action::Retry),
        "{:?}",
        got[0]
    );
    let requests = server.received_requests().await.unwrap();
    assert!(
        requests.iter().all(|r| r.url.path().ends_with("/list")),
        "no details call after a failed list"
    );
}

/// KooSearch: absent only when the listing by chat_id omits it (or marks it is_del) and the
/// one-chat GET shows nothing (404, `{}`); content in the GET means present; a 404 there is not
/// a pause.
#[tokio::test]
async fn koosearch_read_back_asks_the_listing_by_chat_id_and_the_one_chat_get() {
    use forgetd::providers::{Presence, ReadBackChat};
    let server = MockServer::start().await;
    let list_path = format!("/v1/{PROJECT}/applications/{APP}/uni-search/chat-history");
    let listing = |chat: &str, records: serde_json::Value| {
        Mock::given(method("GET"))
            .and(path(list_path.clone()))
            .and(query_param("chat_id", chat))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "total": records.as_array().unwrap().len(), "size": 10, "pages": 1, "current": 1, "records": records
            })))
    };
    listing(
        "listed",
        json!([{"chat_id": "listed", "create_date_time": "1731052459260", "is_del": false}]),
    )
    .mount(&server)
    .await;
    listing(
        "soft-deleted",
        json!([{"chat_id": "soft-deleted", "create_date_time": "1731052459260", "is_del": true}]),
    )
    .mount(&server)
    .await;
    for chat in ["gone", "readable"] {
        listing(chat, json!([])).mount(&server).await;
    }
    let one = |chat: &str, answer: ResponseTemplate| {
        Mock::given(method("GET"))
            .and(path(format!("{list_path}/{chat}")))
            .respond_with(answer)
    };
    one(
        "soft-deleted",
        ResponseTemplate::new(200)
            .set_body_json(json!({"chat_id": "soft-deleted", "is_del": true})),
    )
    .mount(&server)
    .await;
    one(
        "gone",
        ResponseTemplate::new(404)
            .set_body_json(json!({"error_code": "KOS.00010404", "error_msg": "not found"})),
    )
    .mount(&server)
    .await;
    one(
        "readable",
        ResponseTemplate::new(200)
            .set_body_json(json!({"chat_id": "readable", "question": "q", "answer": "a"})),
    )
    .mount(&server)
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = koosearch(
        &server,
        KooSearchAuth::Token(secret_file(&dir, "t", "MIItoken")),
    );
    let chats: Vec<ReadBackChat> = ["listed", "soft-deleted", "gone", "readable"]
        .iter()
        .map(|s| ReadBackChat {
            session_id: s.to_string(),
            repo_id: None,
        })
        .collect();
    let got = client.read_back(APP, &chats, 0.2).await;
    assert_eq!(got[0].as_ref().ok(), Some(&Presence::Present));
    assert_eq!(got[1].as_ref().ok(), Some(&Presence::Absent));
    assert_eq!(got[2].as_ref().ok(), Some(&Presence::Absent));
    assert_eq!(got[3].as_ref().ok(), Some(&Presence::Present));
    assert!(
        client.gate().paused().is_none(),
        "a 404 on the one-chat GET is not a pause"
    );
}
