//! Enrichment: the columns the processor derives from each event before storing it — from
//! the user agent the browser, OS, device type and bot flag ([`agent`]); from the referrer
//! its host, a source and a channel ([`source`]); from the page's URL its UTM parameters.
//! Nothing here fails: what cannot be read is left empty.

use tally_contracts::{Enrichment, Event};

pub mod agent;
pub mod source;

pub use agent::AgentParser;

/// The UTM parameters of a page's URL.
#[derive(Debug, Default, PartialEq)]
pub struct Campaign {
    pub source: String,
    pub medium: String,
    pub campaign: String,
    pub term: String,
    pub content: String,
}

impl Campaign {
    /// The `utm_*` query parameters of `url` (the first of each), empty when absent.
    pub fn of(url: Option<&url::Url>) -> Self {
        let mut campaign = Self::default();
        let Some(url) = url.filter(|u| u.query().is_some_and(|q| q.contains("utm_"))) else {
            return campaign;
        };
        for (key, value) in url.query_pairs() {
            let slot = match &*key {
                "utm_source" => &mut campaign.source,
                "utm_medium" => &mut campaign.medium,
                "utm_campaign" => &mut campaign.campaign,
                "utm_term" => &mut campaign.term,
                "utm_content" => &mut campaign.content,
                _ => continue,
            };
            if slot.is_empty() {
                // The column holds what a person typed, within reason.
                *slot = value.chars().take(256).collect();
            }
        }
        campaign
    }
}

/// Derives an event's enrichment columns.
pub struct Enricher {
    agents: AgentParser,
}

impl Enricher {
    /// Compiles the user-agent patterns (a fraction of a second, once per process).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            agents: AgentParser::new()?,
        })
    }

    pub fn enrich(&self, event: &Event) -> Enrichment {
        // The page's URL is parsed only when it matters: for its campaign, or for its host
        // (is the referrer the same site?).
        let page = (!event.referrer.is_empty() || event.url.contains("utm_"))
            .then(|| parse_url(&event.url))
            .flatten();
        let campaign = Campaign::of(page.as_ref());
        let referrer = source::classify(
            &event.referrer,
            page.as_ref().and_then(url::Url::host_str),
            &campaign,
        );
        Enrichment {
            agent: self.agents.parse(&event.user_agent),
            referrer_host: referrer.host,
            source: referrer.source,
            channel: referrer.channel,
            utm_source: campaign.source,
            utm_medium: campaign.medium,
            utm_campaign: campaign.campaign,
            utm_term: campaign.term,
            utm_content: campaign.content,
        }
    }
}

/// An absolute http(s) URL, else nothing.
fn parse_url(text: &str) -> Option<url::Url> {
    if text.is_empty() {
        return None;
    }
    url::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utm_parameters_come_from_the_page_url() {
        let url = url::Url::parse(
            "https://shop.example.com/?utm_source=news&utm_medium=email&utm_campaign=spring%20sale&utm_term=shoes&utm_content=hero&utm_source=other",
        )
        .unwrap();
        assert_eq!(
            Campaign::of(Some(&url)),
            Campaign {
                source: "news".into(),
                medium: "email".into(),
                campaign: "spring sale".into(),
                term: "shoes".into(),
                content: "hero".into(),
            }
        );
        let plain = url::Url::parse("https://shop.example.com/?q=1").unwrap();
        assert_eq!(Campaign::of(Some(&plain)), Campaign::default());
        assert_eq!(Campaign::of(None), Campaign::default());
    }
}
