//! The session browser checked against a generated history: sessions over three days of a
//! site in another time zone, with paths, titles and properties to search, events without
//! a session, and another site's sessions. The list (order, every figure, pages, ranges),
//! the search (in paths, titles and property values, case-insensitive, `%` and `_` taken
//! literally, through the n-gram index) and one session's events are compared with what the
//! history says.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tally_e2e::{ADMIN_KEY, DATABASE, Options, Stack, clickhouse_time};
use time::OffsetDateTime;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// `Etc/GMT+5`: five hours behind UTC.
const OFFSET_MS: i64 = -5 * HOUR_MS;

#[derive(Clone)]
struct Event {
    site: &'static str,
    session: String,
    visitor: String,
    ts: i64,
    event_type: &'static str,
    path: String,
    title: String,
    properties: Value,
    source: &'static str,
}

fn rfc3339(ms: i64) -> String {
    let t = clickhouse_time(ms);
    format!("{}T{}Z", &t[..10], &t[11..])
}

#[tokio::test]
async fn sessions_are_listed_searched_and_opened_as_the_history_has_them() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        site_spec: vec![("shop", "timeZone: Etc/GMT+5".into())],
        ..Options::default()
    })
    .await?;
    // The site's today: between midnight UTC and 05:00 UTC it is still yesterday there.
    let today = OffsetDateTime::now_utc()
        .to_offset(time::UtcOffset::from_whole_seconds(
            (OFFSET_MS / 1000) as i32,
        )?)
        .date();
    // The site's midnight two days ago.
    let start = (today - time::Duration::days(2))
        .midnight()
        .assume_utc()
        .unix_timestamp()
        * 1000
        - OFFSET_MS;
    let mut events = Vec::new();
    let words = [
        "Checkout",
        "Pricing",
        "Refund 50% off",
        "docs_page",
        "Übersicht",
    ];
    for s in 0..60i64 {
        let site = if s % 10 == 9 { "docs" } else { "shop" };
        let session = format!("sess-{s:02}");
        let visitor = format!("v-{}", s % 17);
        let begin = start + s * (DAY_MS * 5 / 2 / 60) + 17;
        let source = ["", "Google", "newsletter"][(s % 3) as usize];
        for k in 0..1 + s % 5 {
            let word = words[((s + k) % 5) as usize];
            events.push(Event {
                site,
                session: session.clone(),
                visitor: visitor.clone(),
                ts: begin + k * 61_000,
                event_type: if k % 2 == 0 { "page_view" } else { "click" },
                path: format!("/p/{}", (s * 7 + k) % 11),
                title: if k == 0 {
                    word.to_owned()
                } else {
                    String::new()
                },
                properties: if k == 1 {
                    json!({"label": word})
                } else {
                    json!({})
                },
                source: if k == 0 { source } else { "" },
            });
        }
    }
    // Events without a session are in no session.
    for i in 0..5 {
        events.push(Event {
            site: "shop",
            session: String::new(),
            visitor: "loner".into(),
            ts: start + i * HOUR_MS,
            event_type: "page_view",
            path: "/checkout".into(),
            title: "Checkout".into(),
            properties: json!({}),
            source: "",
        });
    }
    let rows: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "event_id": uuid::Uuid::new_v4().to_string(), "site_id": e.site,
                "event_type": e.event_type, "timestamp": clickhouse_time(e.ts),
                "received_at": clickhouse_time(e.ts), "path": e.path, "title": e.title,
                "visitor_id": e.visitor, "session_id": e.session,
                "properties": e.properties.to_string(), "source": e.source,
                "channel": if e.source.is_empty() { "Direct" } else { "Referral" },
                "browser": "Firefox", "device": "desktop",
            })
        })
        .collect();
    stack.insert_events(&rows, 50).await?;

    // The reference: each shop session's events, oldest first.
    let mut sessions: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.site == "shop" && !e.session.is_empty())
    {
        sessions.entry(&e.session).or_default().push(e);
    }
    let expected = |from: i64, to: i64, search: Option<&str>| -> Vec<&str> {
        let mut found: Vec<(&str, i64)> = sessions
            .iter()
            .filter(|(_, list)| list[0].ts >= from && list[0].ts < to)
            .filter(|(_, list)| {
                search.is_none_or(|s| {
                    let s = s.to_lowercase();
                    list.iter().any(|e| {
                        format!("{} {} {}", e.path, e.title, e.properties)
                            .to_lowercase()
                            .contains(&s)
                    })
                })
            })
            .map(|(id, list)| (*id, list[0].ts))
            .collect();
        found.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        found.into_iter().map(|(id, _)| id).collect()
    };
    let ask = |query: String| {
        let url = stack.query_url(&format!("/v1/sessions?site_id=shop&{query}"));
        let request = stack.http.get(url).header("x-api-key", ADMIN_KEY);
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        }
    };
    let ids = |answer: &Value| -> Vec<String> {
        answer["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect()
    };

    // All of them in the three days, every figure.
    let days = format!("{},{}", today - time::Duration::days(2), today);
    let (status, all) = ask(format!("date_range={days}&limit=1000")).await?;
    assert_eq!(status, 200, "{all}");
    let want = expected(start, start + 3 * DAY_MS, None);
    assert_eq!(ids(&all), want, "{all}");
    assert_eq!(all["total"], want.len());
    for summary in all["sessions"].as_array().unwrap() {
        let list = &sessions[summary["session_id"].as_str().unwrap()];
        let (first, last) = (list[0], list[list.len() - 1]);
        let views: Vec<&&Event> = list
            .iter()
            .filter(|e| e.event_type == "page_view")
            .collect();
        assert_eq!(summary["started_at"], rfc3339(first.ts), "{summary}");
        assert_eq!(summary["ended_at"], rfc3339(last.ts), "{summary}");
        assert_eq!(
            summary["duration"].as_f64(),
            Some((last.ts - first.ts) as f64 / 1000.0)
        );
        assert_eq!(summary["events"], list.len(), "{summary}");
        assert_eq!(summary["page_views"], views.len(), "{summary}");
        assert_eq!(summary["entry_page"], views[0].path, "{summary}");
        assert_eq!(
            summary["exit_page"],
            views[views.len() - 1].path,
            "{summary}"
        );
        assert_eq!(
            summary["visitor"],
            format!("v:{}", first.visitor),
            "{summary}"
        );
        assert_eq!(summary["source"], first.source, "{summary}");
    }

    // Pages: consecutive, not overlapping, together the whole list.
    let mut paged = Vec::new();
    for offset in (0..want.len()).step_by(7) {
        let (_, page) = ask(format!("date_range={days}&limit=7&offset={offset}")).await?;
        assert_eq!(page["total"], want.len());
        paged.extend(ids(&page));
    }
    assert_eq!(paged, want);

    // Yesterday only (the site's day), and the default range (the last seven days).
    let yesterday = today - time::Duration::days(1);
    let (_, one_day) = ask(format!("date_range={yesterday},{yesterday}")).await?;
    assert_eq!(
        ids(&one_day),
        expected(start + DAY_MS, start + 2 * DAY_MS, None),
        "{one_day}"
    );
    let (_, week) = ask(String::new()).await?;
    assert_eq!(week["total"], want.len(), "{week}");

    // Search: in titles, paths and property values; any case; `%` and `_` literally.
    for term in [
        "checkout",
        "PRICING",
        "/p/3",
        "50%",
        "docs_page",
        "übersicht",
        "docs%page",
        "nothing-like-it",
    ] {
        let (status, found) = ask(format!(
            "date_range={days}&limit=1000&search={}",
            urlencode(term)
        ))
        .await?;
        assert_eq!(status, 200, "{term}: {found}");
        assert_eq!(
            ids(&found),
            expected(start, start + 3 * DAY_MS, Some(term)),
            "{term}: {found}"
        );
    }
    let (_, none) = ask(format!("date_range={days}&search=docs%25page")).await?;
    assert_eq!(none["total"], 0, "% is no wildcard: {none}");

    // ClickHouse skips granules by the index for the search the service sends.
    let plan = stack
        .sql(&format!(
            "EXPLAIN indexes = 1 SELECT session_id FROM {DATABASE}.events WHERE site_id = 'shop' \
             AND {} LIKE '%checkout%'",
            tally_contracts::schema::SEARCH_TEXT
        ))
        .await?;
    assert!(
        plan.contains(tally_contracts::schema::SEARCH_INDEX),
        "{plan}"
    );

    // One session, every event in order.
    let id = &want[3];
    let url = stack.query_url(&format!("/v1/sessions/{id}?site_id=shop"));
    let one: Value = stack
        .http
        .get(url)
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?;
    let got: Vec<(String, String, String)> = one["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["timestamp"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["properties"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want_events: Vec<(String, String, String)> = sessions[*id]
        .iter()
        .map(|e| (rfc3339(e.ts), e.path.clone(), e.properties.to_string()))
        .collect();
    assert_eq!(got, want_events, "{one}");

    // Refused: another site's session, an unknown one, a bad range, a long search.
    for (path, status, code) in [
        ("/v1/sessions/sess-09?site_id=shop", 404, "unknown_session"),
        ("/v1/sessions/nope?site_id=shop", 404, "unknown_session"),
        (
            "/v1/sessions?site_id=shop&date_range=fortnight",
            400,
            "invalid_query",
        ),
        ("/v1/sessions?site_id=shop&offset=-1", 400, "invalid_query"),
    ] {
        let response = stack
            .http
            .get(stack.query_url(path))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"], code, "{path}: {body}");
    }
    let (status, _) = ask(format!("search={}", "x".repeat(201))).await?;
    assert_eq!(status, 400);
    Ok(())
}

/// `text` as a query-string value.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
