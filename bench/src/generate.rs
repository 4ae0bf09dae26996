//! Synthetic events: the JSON a browser's tracker.js sends, and the envelope the collector
//! publishes for it (for the baselines, which skip the collector).

use tally_contracts::Event;
use uuid::Uuid;

/// A small deterministic generator (SplitMix64), so every run posts the same kind of data.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            ((u128::from(self.next()) << 64) | u128::from(self.next())).to_be_bytes(),
        )
        .into_uuid()
    }

    /// The fields of one event as tracker.js sends them (no event_id, no timestamp: the
    /// collector fills both).
    fn fields(&mut self, sites: &[String]) -> Fields {
        let site = sites[self.below(sites.len() as u64) as usize].clone();
        // A skewed path popularity: low numbers are much more common.
        let page = {
            let r = self.below(1000);
            r * r / 2000
        };
        let event_type = if self.below(10) < 8 {
            "page_view"
        } else {
            ["click", "signup", "scroll"][self.below(3) as usize]
        };
        let path = format!("/page/{page}");
        Fields {
            url: format!("https://{site}.example.com{path}"),
            referrer: if self.below(3) == 0 {
                "https://www.example.org/search?q=tally".to_owned()
            } else {
                String::new()
            },
            title: format!("Page {page} - {site}"),
            visitor_id: self.uuid().to_string(),
            session_id: self.uuid().to_string(),
            site,
            event_type,
            path,
        }
    }

    /// One event's JSON object.
    pub fn event_json(&mut self, sites: &[String]) -> String {
        let f = self.fields(sites);
        serde_json::json!({
            "site_id": f.site,
            "event_type": f.event_type,
            "url": f.url,
            "referrer": f.referrer,
            "title": f.title,
            "visitor_id": f.visitor_id,
            "session_id": f.session_id,
            "properties": {},
        })
        .to_string()
    }

    /// The envelope the collector would publish for such an event.
    pub fn envelope(&mut self, sites: &[String], now_ms: i64) -> Event {
        let f = self.fields(sites);
        Event {
            event_id: Uuid::now_v7(),
            site_id: f.site,
            event_type: f.event_type.to_owned(),
            timestamp_ms: now_ms,
            received_at_ms: now_ms,
            path: f.path,
            url: f.url,
            referrer: f.referrer,
            title: f.title,
            user_id: String::new(),
            visitor_id: f.visitor_id,
            session_id: f.session_id,
            properties: Event::empty_properties(),
            user_agent: String::new(),
            screen_width: 0,
            screen_height: 0,
            bot: false,
        }
    }

    /// An envelope as a browser's tracker event becomes one: a user agent, a screen size,
    /// a referrer and, for one in five, a campaign link.
    pub fn browser_envelope(&mut self, sites: &[String], now_ms: i64) -> Event {
        let mut event = self.envelope(sites, now_ms);
        event.user_agent = USER_AGENTS[self.below(USER_AGENTS.len() as u64) as usize].to_owned();
        REFERRERS[self.below(REFERRERS.len() as u64) as usize].clone_into(&mut event.referrer);
        if self.below(5) == 0 {
            event
                .url
                .push_str("?utm_source=newsletter&utm_medium=email&utm_campaign=spring");
        }
        event.screen_width = 1920;
        event.screen_height = 1080;
        event
    }
}

/// User agents of the browsers a site sees most, for the enrichment phase.
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPad; CPU OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.7 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];

/// Referrers of the enrichment phase: search, social, mail, another site, none.
const REFERRERS: &[&str] = &[
    "",
    "",
    "https://www.google.com/",
    "https://www.bing.com/search?q=tally",
    "https://l.facebook.com/l.php?u=x",
    "https://t.co/abc",
    "https://mail.google.com/",
    "https://blog.example.org/post/42",
];

struct Fields {
    site: String,
    event_type: &'static str,
    path: String,
    url: String,
    referrer: String,
    title: String,
    visitor_id: String,
    session_id: String,
}

/// The bench's sites: `site-00` … `site-NN`.
pub fn sites(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("site-{i:02}")).collect()
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
