//! The ClickHouse schema of a pipeline's database: the raw `events` table and the rollups
//! that materialized views keep up to date on every insert. The processor applies these
//! versioned migrations at start (idempotently); the query service's stats API
//! (`tally-query`) and the documented SQL read the tables named here.

/// The raw events table.
pub const EVENTS: &str = "events";
/// Per site per UTC day: page views, events, unique users, unique visitors.
pub const SITE_DAILY: &str = "site_daily";
/// Per site per UTC hour: the same measures as [`SITE_DAILY`].
pub const SITE_HOURLY: &str = "site_hourly";
/// Per site per UTC day per path: page views and unique visitors.
pub const PATH_DAILY: &str = "path_daily";
/// Per site per UTC day per event type: events, unique users, unique visitors.
pub const EVENT_TYPE_DAILY: &str = "event_type_daily";
/// Per site per UTC day per traffic source (channel, source, referrer host): page views,
/// events and unique visitors of the events that arrived from outside the site.
pub const SOURCE_DAILY: &str = "source_daily";
/// Per site per UTC day per browser and major version: page views and unique visitors.
pub const BROWSER_DAILY: &str = "browser_daily";
/// Per site per UTC day per operating system and major version: page views and visitors.
pub const OS_DAILY: &str = "os_daily";
/// Per site per UTC day per device type: page views and unique visitors.
pub const DEVICE_DAILY: &str = "device_daily";
/// Per site per `session_id`: start, end, entry and exit page, counts, and where the
/// session came from (the attributes of its first event).
pub const SESSIONS: &str = "sessions";
/// Per site, experiment, variant, UTC hour and visitor: the first exposure then and the
/// events, of the events that carry `properties.experiment_id` (or `experimentId`) and
/// `properties.variant`. The experiment summaries read it.
pub const EXPERIMENT_EXPOSURES: &str = "experiment_exposures";
/// Per site, UTC hour and event type, bots left out: events and unique visitors. The query
/// API answers from it what needs no visit and no page (totals and time series of
/// visitors, page views and events; events by type).
pub const EVENTS_HOURLY: &str = "events_hourly";
/// Per site, UTC hour, event type and path, bots left out: events and unique visitors. The
/// query API answers from it what needs no visit but a page (top pages, a page's figures).
pub const PAGES_HOURLY: &str = "pages_hourly";
/// Per rollup, the time from which it holds every event: the epoch when it was created
/// before the first event was stored, else a day and an hour after its creation (the
/// events stored before were not counted, and an event may be up to a day ahead of the
/// clock). A rollup answers only for ranges that start there or later.
pub const ROLLUP_COVERAGE: &str = "rollup_coverage";
/// Which migrations have been applied.
pub const MIGRATIONS_TABLE: &str = "schema_migrations";

/// The event type that counts as a page view.
pub const PAGE_VIEW: &str = "page_view";

/// A visitor's identity: the user id when known, else the visitor id, else the session id,
/// prefixed so that equal strings of different kinds never merge; empty when none is known.
pub const VISITOR_KEY: &str = "multiIf(user_id != '', concat('u:', user_id), \
     visitor_id != '', concat('v:', visitor_id), \
     session_id != '', concat('s:', session_id), '')";

/// One schema step. Versions only grow; a released migration is never edited.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    pub statements: Vec<String>,
}

/// The DDL that creates the migrations table itself (always safe to run).
pub fn migrations_table(db: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS `{db}`"),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.{MIGRATIONS_TABLE} (\
               version UInt32, description String, applied_at DateTime('UTC') DEFAULT now()\
             ) ENGINE = MergeTree ORDER BY version"
        ),
    ]
}

/// Every migration of a pipeline database, in order.
pub fn migrations(db: &str) -> Vec<Migration> {
    let rollup = |name: &str, keys: &str, measures: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.{name} ({keys}, {measures}) \
             ENGINE = AggregatingMergeTree \
             PARTITION BY toYYYYMM({partition}) \
             ORDER BY ({order})",
            partition = if keys.contains(" hour DateTime") {
                "hour"
            } else {
                "day"
            },
            order = keys
                .split(',')
                .map(|k| k.split_whitespace().next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let view = |name: &str, select: &str, group_by: &str| {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.{name}_mv TO `{db}`.{name} AS \
             SELECT {select} FROM `{db}`.{EVENTS} GROUP BY {group_by}"
        )
    };
    const COUNTS: &str = "page_views SimpleAggregateFunction(sum, UInt64), \
         events SimpleAggregateFunction(sum, UInt64), \
         users AggregateFunction(uniqExact, String), \
         visitors AggregateFunction(uniqExact, String)";
    let count_measures = format!(
        "countIf(event_type = '{PAGE_VIEW}') AS page_views, count() AS events, \
         uniqExactStateIf(user_id, user_id != '') AS users, \
         uniqExactStateIf({VISITOR_KEY}, {VISITOR_KEY} != '') AS visitors"
    );
    vec![
        Migration {
            version: 1,
            description: "events table and daily, hourly, path and event-type rollups",
            statements: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS `{db}`.{EVENTS} (\
                   event_id UUID, \
                   site_id LowCardinality(String), \
                   event_type LowCardinality(String), \
                   timestamp DateTime64(3, 'UTC'), \
                   received_at DateTime64(3, 'UTC'), \
                   path String, url String, referrer String, title String, \
                   user_id String, visitor_id String, session_id String, \
                   properties String, \
                   INDEX event_id_bloom event_id TYPE bloom_filter(0.001) GRANULARITY 1\
                 ) ENGINE = MergeTree \
                 PARTITION BY toYYYYMM(timestamp) \
                 ORDER BY (site_id, timestamp)"
                ),
                rollup(
                    SITE_DAILY,
                    "site_id LowCardinality(String), day Date",
                    COUNTS,
                ),
                rollup(
                    SITE_HOURLY,
                    "site_id LowCardinality(String), hour DateTime('UTC')",
                    COUNTS,
                ),
                rollup(
                    PATH_DAILY,
                    "site_id LowCardinality(String), day Date, path String",
                    "page_views SimpleAggregateFunction(sum, UInt64), \
                 visitors AggregateFunction(uniqExact, String)",
                ),
                rollup(
                    EVENT_TYPE_DAILY,
                    "site_id LowCardinality(String), day Date, event_type LowCardinality(String)",
                    "events SimpleAggregateFunction(sum, UInt64), \
                 users AggregateFunction(uniqExact, String), \
                 visitors AggregateFunction(uniqExact, String)",
                ),
                view(
                    SITE_DAILY,
                    &format!("site_id, toDate(timestamp) AS day, {count_measures}"),
                    "site_id, day",
                ),
                view(
                    SITE_HOURLY,
                    &format!("site_id, toStartOfHour(timestamp) AS hour, {count_measures}"),
                    "site_id, hour",
                ),
                view(
                    PATH_DAILY,
                    &format!(
                        "site_id, toDate(timestamp) AS day, path, \
                     countIf(event_type = '{PAGE_VIEW}') AS page_views, \
                     uniqExactStateIf({VISITOR_KEY}, {VISITOR_KEY} != '') AS visitors"
                    ),
                    "site_id, day, path",
                ),
                view(
                    EVENT_TYPE_DAILY,
                    &format!(
                        "site_id, toDate(timestamp) AS day, event_type, count() AS events, \
                     uniqExactStateIf(user_id, user_id != '') AS users, \
                     uniqExactStateIf({VISITOR_KEY}, {VISITOR_KEY} != '') AS visitors"
                    ),
                    "site_id, day, event_type",
                ),
            ],
        },
        Migration {
            version: 2,
            description: "events.is_bot: events of known bots, kept by sites that flag them",
            statements: vec![format!(
                "ALTER TABLE `{db}`.{EVENTS} ADD COLUMN IF NOT EXISTS is_bot Bool DEFAULT false"
            )],
        },
        Migration {
            version: 3,
            description: "enrichment columns (browser, OS, device, screen, referrer source and \
                          channel, UTM parameters); source, browser, OS, device and session rollups",
            statements: enrichment_migration(db, &rollup, &view),
        },
        Migration {
            version: 4,
            description: "experiment exposures by site, experiment, variant, hour and visitor",
            statements: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS `{db}`.{EXPERIMENT_EXPOSURES} (\
                       site_id LowCardinality(String), experiment_id String, variant String, \
                       hour DateTime('UTC'), visitor String, \
                       first_seen SimpleAggregateFunction(min, DateTime64(3, 'UTC')), \
                       events SimpleAggregateFunction(sum, UInt64)\
                     ) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(hour) \
                     ORDER BY (site_id, experiment_id, hour, variant, visitor)"
                ),
                format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.{EXPERIMENT_EXPOSURES}_mv \
                     TO `{db}`.{EXPERIMENT_EXPOSURES} AS \
                     SELECT site_id, {EXPERIMENT_ID} AS experiment_id, {VARIANT} AS variant, \
                     toStartOfHour(timestamp) AS hour, {VISITOR_KEY} AS visitor, \
                     min(timestamp) AS first_seen, count() AS events \
                     FROM `{db}`.{EVENTS} WHERE NOT is_bot AND experiment_id != '' AND variant != '' \
                     GROUP BY site_id, experiment_id, variant, hour, visitor"
                ),
            ],
        },
        Migration {
            version: 5,
            description: "an n-gram index over each event's searchable text (path, title, \
                          properties) for the session browser's search",
            statements: vec![
                format!(
                    "ALTER TABLE `{db}`.{EVENTS} ADD INDEX IF NOT EXISTS {SEARCH_INDEX} \
                     {SEARCH_TEXT} TYPE ngrambf_v1(3, 65536, 2, 0) GRANULARITY 1"
                ),
                // The parts stored before: in the background (a mutation).
                format!("ALTER TABLE `{db}`.{EVENTS} MATERIALIZE INDEX {SEARCH_INDEX}"),
            ],
        },
        Migration {
            version: 6,
            description: "hourly rollups of events and of pages without bots, for the query \
                          API, and the time from which each holds every event",
            statements: query_rollups_migration(db, &rollup),
        },
    ]
}

/// The n-gram bloom filter index of `events` over [`SEARCH_TEXT`].
pub const SEARCH_INDEX: &str = "search_ngrams";
/// What the session browser searches in an event: its path, title and properties' JSON
/// text, in lower case. A search must use this very expression (with `LIKE '%…%'`) for
/// ClickHouse to skip the granules the index rules out.
pub const SEARCH_TEXT: &str = "lowerUTF8(concat(path, ' ', title, ' ', properties))";

/// The experiment an event takes part in: `properties.experiment_id`, else
/// `properties.experimentId` (seed 003's spelling); strings only.
pub const EXPERIMENT_ID: &str = "if(JSONExtractString(properties, 'experiment_id') != '', \
     JSONExtractString(properties, 'experiment_id'), JSONExtractString(properties, 'experimentId'))";
/// The variant it saw: `properties.variant`.
pub const VARIANT: &str = "JSONExtractString(properties, 'variant')";

/// Migration 3. New columns take their defaults on the rows stored before it; the new
/// rollups count the events stored from then on (older rows carry no enrichment to count).
fn enrichment_migration(
    db: &str,
    rollup: &dyn Fn(&str, &str, &str) -> String,
    view: &dyn Fn(&str, &str, &str) -> String,
) -> Vec<String> {
    let mut statements: Vec<String> = ENRICHMENT_COLUMNS
        .iter()
        .map(|(name, ty)| {
            format!("ALTER TABLE `{db}`.{EVENTS} ADD COLUMN IF NOT EXISTS {name} {ty}")
        })
        .collect();
    const VIEWS_AND_VISITORS: &str = "page_views SimpleAggregateFunction(sum, UInt64), \
         visitors AggregateFunction(uniqExact, String)";
    let views_and_visitors = format!(
        "countIf(event_type = '{PAGE_VIEW}') AS page_views, \
         uniqExactStateIf({VISITOR_KEY}, {VISITOR_KEY} != '') AS visitors"
    );
    statements.extend([
        rollup(
            SOURCE_DAILY,
            "site_id LowCardinality(String), day Date, channel LowCardinality(String), \
             source String, referrer_host String",
            "page_views SimpleAggregateFunction(sum, UInt64), \
             events SimpleAggregateFunction(sum, UInt64), \
             visitors AggregateFunction(uniqExact, String)",
        ),
        rollup(
            BROWSER_DAILY,
            "site_id LowCardinality(String), day Date, browser LowCardinality(String), \
             browser_version LowCardinality(String)",
            VIEWS_AND_VISITORS,
        ),
        rollup(
            OS_DAILY,
            "site_id LowCardinality(String), day Date, os LowCardinality(String), \
             os_version LowCardinality(String)",
            VIEWS_AND_VISITORS,
        ),
        rollup(
            DEVICE_DAILY,
            "site_id LowCardinality(String), day Date, device LowCardinality(String)",
            VIEWS_AND_VISITORS,
        ),
        // One row per session, merged across inserts: no partitions, since a session's
        // events may be stored months apart only in theory and its row must merge.
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.{SESSIONS} (\
               site_id LowCardinality(String), session_id String, \
               started_at SimpleAggregateFunction(min, DateTime64(3, 'UTC')), \
               ended_at SimpleAggregateFunction(max, DateTime64(3, 'UTC')), \
               page_views SimpleAggregateFunction(sum, UInt64), \
               events SimpleAggregateFunction(sum, UInt64), \
               visitor AggregateFunction(argMin, String, DateTime64(3, 'UTC')), \
               entry_page AggregateFunction(argMin, String, DateTime64(3, 'UTC')), \
               exit_page AggregateFunction(argMax, String, DateTime64(3, 'UTC')), \
               {first}\
             ) ENGINE = AggregatingMergeTree ORDER BY (site_id, session_id)",
            first = SESSION_ATTRIBUTES
                .iter()
                .map(|c| format!("{c} AggregateFunction(argMin, String, DateTime64(3, 'UTC'))"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        view(
            SOURCE_DAILY,
            &format!(
                "site_id, toDate(timestamp) AS day, channel, source, referrer_host, \
                 countIf(event_type = '{PAGE_VIEW}') AS page_views, count() AS events, \
                 uniqExactStateIf({VISITOR_KEY}, {VISITOR_KEY} != '') AS visitors"
            ),
            &format!("site_id, day, channel, source, referrer_host HAVING channel != '{INTERNAL}'"),
        ),
        view(
            BROWSER_DAILY,
            &format!(
                "site_id, toDate(timestamp) AS day, browser, browser_version, {views_and_visitors}"
            ),
            "site_id, day, browser, browser_version",
        ),
        view(
            OS_DAILY,
            &format!("site_id, toDate(timestamp) AS day, os, os_version, {views_and_visitors}"),
            "site_id, day, os, os_version",
        ),
        view(
            DEVICE_DAILY,
            &format!("site_id, toDate(timestamp) AS day, device, {views_and_visitors}"),
            "site_id, day, device",
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.{SESSIONS}_mv TO `{db}`.{SESSIONS} AS \
             SELECT site_id, session_id, min(timestamp) AS started_at, max(timestamp) AS ended_at, \
             countIf(event_type = '{PAGE_VIEW}') AS page_views, count() AS events, \
             argMinState({VISITOR_KEY}, timestamp) AS visitor, \
             argMinStateIf(path, timestamp, event_type = '{PAGE_VIEW}') AS entry_page, \
             argMaxStateIf(path, timestamp, event_type = '{PAGE_VIEW}') AS exit_page, \
             {first} \
             FROM `{db}`.{EVENTS} WHERE session_id != '' GROUP BY site_id, session_id",
            first = SESSION_ATTRIBUTES
                .iter()
                .map(|c| format!("argMinState({c}, timestamp) AS {c}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ]);
    statements
}

/// Migration 6. Instead of copying the events stored before (which would count twice
/// those a processor stores meanwhile, or a second replica applying the same migration),
/// the rollups record from when they are complete ([`ROLLUP_COVERAGE`]).
fn query_rollups_migration(db: &str, rollup: &dyn Fn(&str, &str, &str) -> String) -> Vec<String> {
    const MEASURES: &str = "events SimpleAggregateFunction(sum, UInt64), \
         visitors AggregateFunction(uniqExact, String)";
    let bots_left_out = |name: &str, keys: &str| {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.{name}_mv TO `{db}`.{name} AS \
             SELECT site_id, toStartOfHour(timestamp) AS hour, {keys}, count() AS events, \
                    uniqExactStateIf({VISITOR_KEY}, {VISITOR_KEY} != '') AS visitors \
             FROM `{db}`.{EVENTS} WHERE NOT is_bot GROUP BY site_id, hour, {keys}"
        )
    };
    vec![
        rollup(
            EVENTS_HOURLY,
            "site_id LowCardinality(String), hour DateTime('UTC'), \
             event_type LowCardinality(String)",
            MEASURES,
        ),
        rollup(
            PAGES_HOURLY,
            "site_id LowCardinality(String), hour DateTime('UTC'), \
             event_type LowCardinality(String), path String",
            MEASURES,
        ),
        bots_left_out(EVENTS_HOURLY, "event_type"),
        bots_left_out(PAGES_HOURLY, "event_type, path"),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.{ROLLUP_COVERAGE} \
             (rollup_table LowCardinality(String), since DateTime64(3, 'UTC')) \
             ENGINE = MergeTree ORDER BY rollup_table"
        ),
        // After the views exist: an event stored from then on is counted.
        format!(
            "INSERT INTO `{db}`.{ROLLUP_COVERAGE} \
             SELECT arrayJoin(['{EVENTS_HOURLY}', '{PAGES_HOURLY}']), \
                    if((SELECT count() FROM `{db}`.{EVENTS}) = 0, toDateTime64(0, 3, 'UTC'), \
                       toDateTime64(toStartOfHour(now() + INTERVAL 25 HOUR), 3, 'UTC'))"
        ),
    ]
}

/// The columns migration 3 adds to `events`, in order (the processor fills them).
pub const ENRICHMENT_COLUMNS: &[(&str, &str)] = &[
    ("browser", "LowCardinality(String) DEFAULT ''"),
    ("browser_version", "LowCardinality(String) DEFAULT ''"),
    ("os", "LowCardinality(String) DEFAULT ''"),
    ("os_version", "LowCardinality(String) DEFAULT ''"),
    ("device", "LowCardinality(String) DEFAULT ''"),
    ("screen_width", "UInt16 DEFAULT 0"),
    ("screen_height", "UInt16 DEFAULT 0"),
    ("referrer_host", "String DEFAULT ''"),
    ("source", "String DEFAULT ''"),
    ("channel", "LowCardinality(String) DEFAULT ''"),
    ("utm_source", "String DEFAULT ''"),
    ("utm_medium", "String DEFAULT ''"),
    ("utm_campaign", "String DEFAULT ''"),
    ("utm_term", "String DEFAULT ''"),
    ("utm_content", "String DEFAULT ''"),
];

/// The attributes a visit takes from its first event: the `sessions` table keeps them,
/// and the query API's `visit:*` dimensions read them.
pub const SESSION_ATTRIBUTES: &[&str] = &[
    "referrer",
    "referrer_host",
    "source",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "device",
];

/// The channel of an event whose referrer is a page of the same site: a step inside a
/// visit, not a way in; the source rollup leaves such events out.
pub const INTERNAL: &str = "Internal";

/// The statement that makes the raw table keep `retention_days` of data (or keep it all).
pub fn retention_statement(db: &str, retention_days: Option<u32>) -> String {
    match retention_days {
        Some(days) => format!(
            "ALTER TABLE `{db}`.{EVENTS} MODIFY TTL toDateTime(timestamp) + INTERVAL {days} DAY"
        ),
        None => format!("ALTER TABLE `{db}`.{EVENTS} REMOVE TTL"),
    }
}

/// The SQL behind the totals of `/v1/stats` (and documented in the README): one site's page
/// views, unique users and unique visitors on one UTC day, from the daily rollup. Parameters:
/// `{site:String}`, `{day:Date}`. The bench times this same statement.
pub fn totals_sql(db: &str) -> String {
    format!(
        "SELECT sum(page_views) AS total_views, uniqExactMerge(users) AS unique_users, \
         uniqExactMerge(visitors) AS unique_visitors \
         FROM `{db}`.{SITE_DAILY} WHERE site_id = {{site:String}} AND day = {{day:Date}}"
    )
}

/// The SQL behind `top_paths` of `/v1/stats` (and documented in the README): one site's most
/// viewed paths on one UTC day. Parameters: `{site:String}`, `{day:Date}`, `{limit:UInt32}`.
pub fn top_paths_sql(db: &str) -> String {
    format!(
        "SELECT path, sum(page_views) AS views FROM `{db}`.{PATH_DAILY} \
         WHERE site_id = {{site:String}} AND day = {{day:Date}} \
         GROUP BY path HAVING views > 0 ORDER BY views DESC, path ASC LIMIT {{limit:UInt32}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_sql_reads_the_rollups_of_the_given_database() {
        let totals = totals_sql("tally_web");
        assert!(totals.contains("FROM `tally_web`.site_daily"), "{totals}");
        let top = top_paths_sql("tally_web");
        assert!(top.contains("FROM `tally_web`.path_daily"), "{top}");
        for (sql, params) in [
            (&totals, &["{site:String}", "{day:Date}"][..]),
            (&top, &["{site:String}", "{day:Date}", "{limit:UInt32}"][..]),
        ] {
            for param in params {
                assert!(sql.contains(param), "{param} not in {sql}");
            }
        }
    }

    #[test]
    fn versions_strictly_increase_from_one() {
        let versions: Vec<u32> = migrations("db").iter().map(|m| m.version).collect();
        assert_eq!(versions.first(), Some(&1));
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_statement_targets_the_given_database() {
        for m in migrations("tally_web") {
            for s in &m.statements {
                assert!(s.contains("`tally_web`."), "{s}");
            }
        }
    }

    #[test]
    fn rollup_order_keys_are_the_key_columns() {
        let ddl = &migrations("db")[0].statements[4];
        assert!(ddl.contains("ORDER BY (site_id, day, event_type)"), "{ddl}");
    }
}
