//! Experiment summaries checked against a generated history: users assigned to three
//! variants (planned 1:1:2), exposures under both spellings of the experiment's id, users
//! seen in two variants, goal events before and after exposure and outside the window,
//! undeclared variants, anonymous events and bots — stored in ClickHouse, where the
//! `experiment_exposures` rollup fills as they are inserted. Every figure of
//! `/v1/experiments/{id}/summary` is compared with the same computed here, the statistics
//! with formulas written here again.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tally_e2e::{ADMIN_KEY, Options, Stack, clickhouse_time};
use time::OffsetDateTime;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The site's zone: three hours ahead of UTC.
const OFFSET_MS: i64 = 3 * HOUR_MS;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Row {
    event_type: &'static str,
    ts: i64,
    user: String,
    properties: Value,
    bot: bool,
}

fn exposure(variant: &str, seed_spelling: bool) -> Value {
    if seed_spelling {
        json!({"experimentId": "checkout", "variant": variant})
    } else {
        json!({"experiment_id": "checkout", "variant": variant})
    }
}

/// The standard normal's upper tail, by Abramowitz and Stegun 7.1.26 (error < 1.5e-7).
fn upper_tail(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    poly * (-x * x).exp() / 2.0
}

#[tokio::test]
async fn experiment_summaries_equal_the_history_computed_independently() -> anyhow::Result<()> {
    let experiment = "experiments: [{id: checkout, description: Green or blue, variants: [{name: A}, {name: B}, {name: C, weight: 2}], control: A, goal: Purchase, status: running}]";
    let stack = Stack::start(Options {
        site_spec: vec![
            ("shop", "timeZone: Etc/GMT-3".into()),
            (
                "shop",
                "goals: [{name: Purchase, eventType: purchase}]".into(),
            ),
            ("shop", experiment.into()),
        ],
        ..Options::default()
    })
    .await?;
    // The window: the site's day before yesterday and yesterday.
    let today = OffsetDateTime::now_utc().date();
    let first_day = today - time::Duration::days(2);
    let from = first_day.midnight().assume_utc().unix_timestamp() * 1000 - OFFSET_MS;
    let to = from + 2 * DAY_MS;
    let mut rng = Rng(0x2026_1207);
    let mut rows = Vec::new();
    let variants = ["A", "B", "C", "C"];
    for u in 0..400 {
        let user = format!("user-{u}");
        // Exposures from a day before the window to a day after it.
        let exposed = from - DAY_MS + rng.below(4 * DAY_MS as u64) as i64;
        let variant = variants[rng.below(4) as usize];
        for k in 0..1 + rng.below(3) {
            rows.push(Row {
                event_type: "page_view",
                ts: exposed + k as i64 * 60_000,
                user: user.clone(),
                properties: exposure(variant, u % 3 == 0),
                bot: false,
            });
        }
        if u % 97 == 5 {
            // Seen in a second variant too.
            rows.push(Row {
                event_type: "page_view",
                ts: exposed + 3_600_000,
                user: user.clone(),
                properties: exposure(if variant == "A" { "B" } else { "A" }, false),
                bot: false,
            });
        }
        // Purchases: some after the exposure, some before it.
        let chance = match variant {
            "A" => 20,
            "B" => 35,
            _ => 25,
        };
        if rng.below(100) < chance {
            let after = exposed + 1 + rng.below(6 * HOUR_MS as u64) as i64;
            rows.push(Row {
                event_type: "purchase",
                ts: after,
                user: user.clone(),
                properties: json!({"amount": 10}),
                bot: false,
            });
        } else if rng.below(100) < 10 {
            rows.push(Row {
                event_type: "purchase",
                ts: exposed - 1 - rng.below(HOUR_MS as u64) as i64,
                user: user.clone(),
                properties: json!({}),
                bot: false,
            });
        }
    }
    for i in 0..7 {
        let ts = from + 1000 + i * HOUR_MS;
        // A variant the experiment does not declare, anonymous exposures, and a bot.
        rows.push(Row {
            event_type: "page_view",
            ts,
            user: format!("stray-{i}"),
            properties: exposure("D", false),
            bot: false,
        });
        rows.push(Row {
            event_type: "page_view",
            ts,
            user: String::new(),
            properties: exposure("B", false),
            bot: false,
        });
        rows.push(Row {
            event_type: "page_view",
            ts,
            user: "crawler".into(),
            properties: exposure("A", false),
            bot: true,
        });
    }
    let lines: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "event_id": uuid::Uuid::new_v4().to_string(), "site_id": "shop",
                "event_type": r.event_type, "timestamp": clickhouse_time(r.ts), "received_at": clickhouse_time(r.ts),
                "path": "/checkout", "user_id": r.user, "properties": r.properties.to_string(),
                "is_bot": r.bot,
            })
        })
        .collect();
    // In several inserts, as the processor's batches arrive.
    stack.insert_events(&lines, 300).await?;

    // The reference: per user the variants seen in the window and the first exposure.
    let mut seen: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    let (mut events, mut undeclared) = (BTreeMap::<String, u64>::new(), 0);
    for r in rows.iter().filter(|r| !r.bot && r.ts >= from && r.ts < to) {
        let Some(variant) = r.properties["variant"].as_str() else {
            continue;
        };
        *events.entry(variant.to_owned()).or_default() += 1;
        if variant == "D" {
            undeclared += 1;
        }
        if !r.user.is_empty() {
            let first = seen
                .entry(&r.user)
                .or_default()
                .entry(variant)
                .or_insert(r.ts);
            *first = (*first).min(r.ts);
        }
    }
    let mut want: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut several = 0;
    for (user, variants) in &seen {
        if variants.len() > 1 {
            several += 1;
            continue;
        }
        let (variant, first) = variants.iter().next().unwrap();
        let converted = rows
            .iter()
            .any(|r| r.user == *user && r.event_type == "purchase" && r.ts >= *first && r.ts < to);
        let entry = want.entry(variant).or_default();
        entry.0 += 1;
        entry.1 += u64::from(converted);
    }

    let client = &stack.http;
    let url = stack.query_url(&format!(
        "/v1/experiments/checkout/summary?site_id=shop&startDate={first_day}&endDate={}",
        today - time::Duration::days(1)
    ));
    let answer: Value = client
        .get(&url)
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["experimentId"], "checkout", "{answer}");
    assert_eq!(answer["control"], "A");
    assert_eq!(answer["goal"], "Purchase");
    assert_eq!(answer["status"], "running");
    assert_eq!(
        answer["totalEvents"],
        events.values().sum::<u64>(),
        "{answer}"
    );
    assert_eq!(answer["uniqueUsers"], seen.len(), "{answer}");
    assert_eq!(answer["usersInSeveralVariants"], several, "{answer}");
    assert!(several >= 2, "the history has users in two variants");
    assert_eq!(
        answer["undeclaredVariants"],
        json!({"D": undeclared}),
        "{answer}"
    );
    for name in ["A", "B", "C"] {
        let (users, conversions) = want.get(name).copied().unwrap_or_default();
        let v = &answer["variants"][name];
        assert_eq!(
            v["events"],
            events.get(name).copied().unwrap_or(0),
            "{name}: {answer}"
        );
        assert_eq!(v["users"], users, "{name}: {answer}");
        assert_eq!(v["conversions"], conversions, "{name}: {answer}");
        let rate = 100.0 * conversions as f64 / users as f64;
        assert!(
            (v["conversionRate"].as_f64().unwrap() - rate).abs() < 0.005,
            "{name}"
        );
    }
    // B and C against A: the pooled two-proportion z-test and the unpooled interval.
    let (n_a, x_a) = want["A"];
    for (i, name) in ["B", "C"].iter().enumerate() {
        let (n, x) = want[name];
        assert_eq!(answer["comparisons"][i]["variant"], *name);
        let c = &answer["comparisons"][i]["uplift"];
        let (p_a, p) = (x_a as f64 / n_a as f64, x as f64 / n as f64);
        let pooled = (x_a + x) as f64 / (n_a + n) as f64;
        let z = (p - p_a) / (pooled * (1.0 - pooled) * (1.0 / n_a as f64 + 1.0 / n as f64)).sqrt();
        let spread = (p_a * (1.0 - p_a) / n_a as f64 + p * (1.0 - p) / n as f64).sqrt();
        let near = |got: &Value, want: f64, within: f64| {
            assert!(
                (got.as_f64().unwrap() - want).abs() <= within,
                "{got} ≠ {want}: {c}"
            );
        };
        near(&c["absoluteUplift"], 100.0 * (p - p_a), 1e-4);
        near(&c["relativeUplift"], 100.0 * (p - p_a) / p_a, 0.01);
        near(&c["zScore"], z, 1e-4);
        near(&c["pValue"], 2.0 * upper_tail(z), 1e-5);
        near(
            &c["confidenceInterval"][0],
            100.0 * (p - p_a - 1.959_964 * spread),
            1e-3,
        );
        near(
            &c["confidenceInterval"][1],
            100.0 * (p - p_a + 1.959_964 * spread),
            1e-3,
        );
        assert_eq!(c["significant"], 2.0 * upper_tail(z) < 0.05, "{c}");
    }
    // The sample ratio against 1:1:2; with two degrees of freedom the tail is e^(-x/2).
    let users: Vec<f64> = ["A", "B", "C"].iter().map(|v| want[v].0 as f64).collect();
    let total: f64 = users.iter().sum();
    let chi: f64 = users
        .iter()
        .zip([0.25, 0.25, 0.5])
        .map(|(o, share)| (o - total * share).powi(2) / (total * share))
        .sum();
    let ratio = &answer["sampleRatio"];
    assert!(
        (ratio["chiSquare"].as_f64().unwrap() - chi).abs() < 1e-4,
        "{ratio}"
    );
    assert!(
        (ratio["pValue"].as_f64().unwrap() - (-chi / 2.0).exp()).abs() < 1e-6,
        "{ratio}"
    );
    assert_eq!(ratio["mismatch"], (-chi / 2.0).exp() < 0.001);
    eprintln!("summary: {answer}");

    // Without a window, the experiment's own (none here: from the start until now) counts
    // more: the exposures before and after the window too.
    let all: Value = client
        .get(stack.query_url("/v1/experiments/checkout/summary?site_id=shop"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?;
    assert!(
        all["totalEvents"].as_u64() > answer["totalEvents"].as_u64(),
        "{all}"
    );

    // The list, and what is refused.
    let list: Value = client
        .get(stack.query_url("/v1/experiments?site_id=shop"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["experiments"][0]["id"], "checkout", "{list}");
    assert_eq!(list["experiments"][0]["status"], "running", "{list}");
    assert_eq!(
        list["experiments"][0]["variants"][2],
        json!({"name": "C", "weight": 2})
    );
    for (path, status, code) in [
        (
            "/v1/experiments/nope/summary?site_id=shop",
            404,
            "unknown_experiment",
        ),
        (
            "/v1/experiments/checkout/summary?site_id=shop&startDate=yesterday",
            400,
            "invalid_query",
        ),
        (
            "/v1/experiments/checkout/summary?site_id=nope",
            404,
            "unknown_site",
        ),
        ("/v1/experiments", 400, "invalid_query"),
    ] {
        let response = client
            .get(stack.query_url(path))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"], code, "{path}: {body}");
    }
    let anonymous = client
        .get(stack.query_url("/v1/experiments?site_id=shop"))
        .send()
        .await?;
    assert_eq!(anonymous.status().as_u16(), 401);
    Ok(())
}
