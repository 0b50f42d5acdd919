//! The certificate as one self-contained, printable HTML page (`audit export --format html`): a
//! summary, a timeline, a table per provider, held chats with their reasons, failed chats, the
//! read-back verification record, the signature and the audit-chain anchor. Everything is in the
//! file (inline CSS, no script, no font, no image, no link out), so it renders the same offline,
//! archived, or printed. Every value is escaped by maud.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::Certificate;
use crate::report::time;
use crate::signing::Signed;

const STYLE: &str = r#"
body { font-family: Georgia, "DejaVu Serif", serif; color: #111; margin: 2rem auto; max-width: 48rem; padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; margin: 0; letter-spacing: .02em; }
h2 { font-size: 1.15rem; margin: 1.8rem 0 .4rem; border-bottom: 1px solid #999; padding-bottom: .15rem; }
.sub { color: #444; margin: .2rem 0 1.2rem; }
.broken { border: 3px solid #a00; color: #a00; padding: .6rem .9rem; font-weight: bold; margin-bottom: 1rem; }
dl.summary { display: grid; grid-template-columns: 11rem 1fr; gap: .25rem .8rem; margin: 0; }
dl.summary dt { color: #444; }
dl.summary dd { margin: 0; font-family: "DejaVu Sans Mono", monospace; font-size: .9rem; word-break: break-all; }
table { border-collapse: collapse; width: 100%; font-size: .88rem; }
th, td { border: 1px solid #bbb; padding: .25rem .45rem; text-align: left; vertical-align: top; }
th { background: #eee; }
td.id { font-family: "DejaVu Sans Mono", monospace; word-break: break-all; }
ol.timeline { padding-left: 1.2rem; }
.mono { font-family: "DejaVu Sans Mono", monospace; font-size: .82rem; word-break: break-all; }
.note { color: #333; font-size: .88rem; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } tr { break-inside: avoid; } }
"#;

/// The page. `signed` is the certificate's signed JSON form, when signing is available.
pub fn render(cert: &Certificate, signed: Option<&Signed>) -> String {
    let deleted: usize = cert.deleted.values().map(Vec::len).sum();
    let confirmed: Vec<i64> = cert
        .deleted
        .values()
        .flatten()
        .filter_map(|c| c.confirmed_at)
        .collect();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Certificate of erasure — request " (cert.request_id) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                @if let Some(why) = &cert.broken {
                    div class="broken" id="broken" {
                        "BROKEN — this certificate rests on a damaged record: " (why)
                    }
                }
                @for n in &cert.notices {
                    div class="broken notice" { "NOTICE — " (n) }
                }
                h1 { "Certificate of erasure" }
                p class="sub" {
                    "Request " (cert.request_id)
                    @if let Some(r) = &cert.external_ref { " · reference " (r) }
                    " · issued by forgetd"
                }
                h2 { "Summary" }
                dl class="summary" {
                    dt { "Request" } dd { (cert.request_id) }
                    dt { "Reference" } dd { (cert.external_ref.as_deref().unwrap_or("—")) }
                    dt { "Person" } dd { "keyed hash " (cert.subject_hash.as_deref().unwrap_or("—")) }
                    dt { "State" } dd id="state" { (cert.state) }
                    dt { "Deleted (confirmed)" } dd id="deleted-count" { (deleted) " chat(s)" }
                    dt { "Held (legal hold)" } dd { (cert.held.len()) " chat(s)" }
                    dt { "Not deleted" } dd { (cert.failed.len()) " chat(s)" }
                }
                h2 { "Timeline" }
                ol class="timeline" {
                    li { "Received " (time(cert.received_at)) }
                    @if let (Some(first), Some(last)) = (confirmed.iter().min(), confirmed.iter().max()) {
                        li { "Deletions confirmed by the providers from " (time(*first)) " to " (time(*last)) }
                    }
                    @if let Some(c) = cert.completed_at { li { "Closed " (time(c)) } }
                    @if let Some(d) = cert.due_at {
                        li {
                            "Due " (time(d))
                            @if let Some(c) = cert.completed_at {
                                @if c <= d { " — met" } @else { " — closed after its due date" }
                            }
                        }
                    }
                }
                @if let Some(at) = cert.reopened_at {
                    p id="reopened" { strong { "This request was re-opened " (time(at)) " (a chat changed fate after it closed); nothing is certified until it closes again." } }
                } @else if cert.anchor.is_none() {
                    p { strong { "This request is not finished; nothing is certified yet." } }
                }
                @for (provider, chats) in &cert.deleted {
                    h2 { (provider) ": deletion confirmed for " (chats.len()) " chat(s)" }
                    table class="provider" data-provider=(provider) {
                        tr { th { "scope" } th { "chat" } th { "confirmed" } th { "answer" } th { "read back" } }
                        @for c in chats {
                            tr {
                                td class="id" { (c.scope) }
                                td class="id" { (c.session_id) }
                                td { (c.confirmed_at.map(time).unwrap_or_default()) }
                                td { @match c.outcome.as_deref() { Some("already_absent") => "already gone", Some(_) => "deleted", None => "—" } }
                                td class={ "verify " (c.verification.status) } { (c.verification.describe()) }
                            }
                        }
                    }
                }
                @if !cert.held.is_empty() {
                    h2 { "Held under legal hold (not deleted)" }
                    table id="held" {
                        tr { th { "provider" } th { "scope" } th { "chat" } th { "hold" } th { "reason" } }
                        @for h in &cert.held {
                            tr {
                                td { (h.provider) } td class="id" { (h.scope) } td class="id" { (h.session_id) }
                                td { (h.hold_id.unwrap_or(0)) } td { (h.reason.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                @if !cert.listings.is_empty() {
                    h2 { "Listings by subject" }
                    ul id="listings" {
                        @for l in &cert.listings {
                            li data-outcome=(match &l.state {
                                crate::store::audit::ListingState::Done { .. } => "done",
                                crate::store::audit::ListingState::Failed { .. } => "failed",
                                crate::store::audit::ListingState::NotFinished => "not_finished",
                            }) { (super::describe_listing(l)) }
                        }
                    }
                }
                @if !cert.failed.is_empty() {
                    h2 { "Not deleted" }
                    table id="failed" {
                        tr { th { "provider" } th { "scope" } th { "chat" } th { "last error" } }
                        @for f in &cert.failed {
                            tr {
                                td { (f.provider) } td class="id" { (f.scope) } td class="id" { (f.session_id) }
                                td { (f.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                h2 { "Read-back verification" }
                p id="verification" data-status=(if cert.verified.is_some() { "verified" } else { "not-verified" }) {
                    (cert.verified_line())
                }
                @if let Some(v) = &cert.verified {
                    p class="note" {
                        "Some time after each confirmed deletion, forgetd read the chat back through the provider's own read calls and found it absent. "
                        "Recorded in audit event " (v.event_seq) " (hash " span class="mono" { (v.event_hash) } ")."
                    }
                } @else {
                    p class="note" {
                        "A chat is verified only when the provider's listing omits it and no read shows it; a read that could not decide is reported unverified, never verified."
                    }
                }
                h2 { "Signature" }
                (signature(signed))
                h2 { "Audit-chain anchor" }
                @match &cert.anchor {
                    Some(a) => {
                        dl class="summary" {
                            dt { "Closing event" } dd { (a.event_seq) }
                            dt { "Event hash" } dd { (a.event_hash) }
                            dt { "Chain head" } dd { (a.chain_head) }
                            dt { "Chain" } dd { (a.chain_events) " event(s), " @if !a.chain_intact { "BROKEN" } @else if a.seals_checked { "verified intact, seals checked" } @else { "hashes intact; seals not checked" } }
                        }
                    }
                    None => p class="note" { "No closing event yet." }
                }
                h2 { "What this certifies" }
                @for c in &cert.caveats { p class="note" { (c) } }
            }
        }
    }
    .into_string()
}

fn signature(signed: Option<&Signed>) -> Markup {
    html! {
        @match signed {
            Some(s) => {
                dl class="summary" id="signature" {
                    dt { "Algorithm" } dd { (s.signature.algorithm) }
                    dt { "Public key" } dd { (s.signature.public_key) }
                    dt { "Signature" } dd { (s.signature.value) }
                }
                p class="note" {
                    "The signature covers the certificate's JSON form ("
                    span class="mono" { "forgetd audit export --request " (s.certificate["request_id"]) " --format signed" }
                    "). Anyone can check that file offline: "
                    span class="mono" { "forgetd certificate verify FILE --public-key PUBLISHED-KEY" }
                    ". Any change to it breaks the signature."
                }
                p class="note" {
                    strong { "Check it with the key the organisation publishes" }
                    " (forgetd audit public-key, published on its own site or letterhead), not with the key printed here: "
                    "a forger would print their own. The key above is shown so the two can be compared."
                }
            }
            None => p class="note" { "Not signed." }
        }
    }
}
