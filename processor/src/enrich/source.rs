//! Where a visit came from: the referrer's host, a source (a known site's name, else the
//! host; else the `utm_source`) and a channel. The known sites are the list below, kept
//! here and nowhere else; the channel rules are in [`classify`] and in the README's SQL
//! reference.

use std::collections::HashMap;
use std::sync::LazyLock;

use tally_contracts::schema::INTERNAL;

use super::Campaign;

/// What a known referrer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Search,
    Social,
    Email,
}

/// Known referrers: a host (matched with its subdomains, after `www.` and `m.` are taken
/// off; the most specific listed host wins) and the name the source column shows. Google's country domains (google.de,
/// google.co.uk) are matched by [`known`] itself.
const KNOWN: &[(&str, &str, Kind)] = &[
    ("mail.google.com", "Gmail", Kind::Email),
    ("mail.yahoo.com", "Yahoo! Mail", Kind::Email),
    ("outlook.live.com", "Outlook", Kind::Email),
    ("outlook.office.com", "Outlook", Kind::Email),
    ("outlook.office365.com", "Outlook", Kind::Email),
    ("mail.proton.me", "Proton Mail", Kind::Email),
    ("mail.yandex.ru", "Yandex Mail", Kind::Email),
    ("bing.com", "Bing", Kind::Search),
    ("duckduckgo.com", "DuckDuckGo", Kind::Search),
    ("search.yahoo.com", "Yahoo!", Kind::Search),
    ("yahoo.com", "Yahoo!", Kind::Search),
    ("yandex.ru", "Yandex", Kind::Search),
    ("yandex.com", "Yandex", Kind::Search),
    ("baidu.com", "Baidu", Kind::Search),
    ("ecosia.org", "Ecosia", Kind::Search),
    ("search.brave.com", "Brave Search", Kind::Search),
    ("startpage.com", "Startpage", Kind::Search),
    ("qwant.com", "Qwant", Kind::Search),
    ("naver.com", "Naver", Kind::Search),
    ("seznam.cz", "Seznam", Kind::Search),
    ("kagi.com", "Kagi", Kind::Search),
    ("facebook.com", "Facebook", Kind::Social),
    ("fb.com", "Facebook", Kind::Social),
    ("instagram.com", "Instagram", Kind::Social),
    ("t.co", "X (Twitter)", Kind::Social),
    ("twitter.com", "X (Twitter)", Kind::Social),
    ("x.com", "X (Twitter)", Kind::Social),
    ("linkedin.com", "LinkedIn", Kind::Social),
    ("lnkd.in", "LinkedIn", Kind::Social),
    ("reddit.com", "Reddit", Kind::Social),
    ("youtube.com", "YouTube", Kind::Social),
    ("youtu.be", "YouTube", Kind::Social),
    ("pinterest.com", "Pinterest", Kind::Social),
    ("tiktok.com", "TikTok", Kind::Social),
    ("news.ycombinator.com", "Hacker News", Kind::Social),
    ("threads.net", "Threads", Kind::Social),
    ("bsky.app", "Bluesky", Kind::Social),
    ("mastodon.social", "Mastodon", Kind::Social),
    ("t.me", "Telegram", Kind::Social),
    ("discord.com", "Discord", Kind::Social),
    ("vk.com", "VKontakte", Kind::Social),
    ("weibo.com", "Weibo", Kind::Social),
    ("quora.com", "Quora", Kind::Social),
    ("stackoverflow.com", "Stack Overflow", Kind::Social),
    ("github.com", "GitHub", Kind::Social),
];

/// A host without the `www.` and `m.` prefixes that do not change the site.
fn bare(host: &str) -> &str {
    let host = host.strip_prefix("www.").unwrap_or(host);
    host.strip_prefix("m.").unwrap_or(host)
}

/// [`KNOWN`] by host.
static BY_HOST: LazyLock<HashMap<&'static str, (&'static str, Kind)>> = LazyLock::new(|| {
    KNOWN
        .iter()
        .map(|(host, name, kind)| (*host, (*name, *kind)))
        .collect()
});

/// The known site `host` (lowercase) belongs to: the host itself or its nearest listed
/// parent domain (so `mail.google.com` is Gmail, `l.facebook.com` Facebook).
fn known(host: &str) -> Option<(&'static str, Kind)> {
    let host = bare(host);
    let mut domain = host;
    loop {
        if let Some(&known) = BY_HOST.get(domain) {
            return Some(known);
        }
        match domain.split_once('.') {
            Some((_, parent)) => domain = parent,
            None => break,
        }
    }
    // google.com, google.de, google.co.uk, news.google.com: a "google" label followed
    // only by a country or generic top-level domain (one or two short labels).
    let mut labels = host.split('.');
    labels.by_ref().find(|label| *label == "google")?;
    let (mut tail, mut short) = (0, true);
    for label in labels {
        tail += 1;
        short &= label.len() <= 3;
    }
    (matches!(tail, 1 | 2) && short).then_some(("Google", Kind::Search))
}

/// The known source a `utm_source` value names ("google", "facebook.com", "Newsletter").
fn known_by_name(value: &str) -> Option<(&'static str, Kind)> {
    let lower = value.to_ascii_lowercase();
    known(&lower).or_else(|| {
        KNOWN
            .iter()
            .find(|(host, name, _)| {
                name.eq_ignore_ascii_case(&lower) || host.split('.').next() == Some(lower.as_str())
            })
            .map(|(_, name, kind)| (*name, *kind))
            .or_else(|| (lower == "google").then_some(("Google", Kind::Search)))
    })
}

/// The referrer's classification.
#[derive(Debug, PartialEq, Eq)]
pub struct Referral {
    /// The referrer's host, lowercase, as given (empty without a referrer URL).
    pub host: String,
    /// A known site's name, else the referrer's host without `www.`, else the
    /// `utm_source`; empty for direct visits and steps inside the site.
    pub source: String,
    pub channel: &'static str,
}

/// Classifies an event's referrer. `page_host` is the host of the event's own page (a
/// referrer on the same host is a step inside the site: channel `Internal`). The channel,
/// first rule that applies:
///
/// 1. `utm_medium` says it: cpc/ppc/paid/… → `Paid Social` when the source is a social
///    network, else `Paid Search`; paid_social → `Paid Social`; *email*/newsletter →
///    `Email`; social → `Organic Social`; display/banner/cpm → `Display`;
///    affiliate(s) → `Affiliates`;
/// 2. a referrer (or, without one, a `utm_source`) that is a known search engine, social
///    network or webmail → `Organic Search`, `Organic Social`, `Email`;
/// 3. a referrer on the page's own host (and no campaign) → `Internal`;
/// 4. any other referrer or `utm_source` → `Referral`;
/// 5. nothing → `Direct`.
pub fn classify(referrer: &str, page_host: Option<&str>, campaign: &Campaign) -> Referral {
    let host = url::Url::parse(referrer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let internal = !host.is_empty()
        && page_host.is_some_and(|page| bare(&page.to_ascii_lowercase()) == bare(&host));
    let external = !host.is_empty() && !internal;
    let utm_source = campaign.source.trim();

    let by_referrer = external.then(|| known(&host)).flatten();
    let by_campaign = (!utm_source.is_empty())
        .then(|| known_by_name(utm_source))
        .flatten();
    let known = by_referrer.or(by_campaign);
    let source = match (external, known) {
        (true, Some((name, _))) if by_referrer.is_some() => name.to_owned(),
        (true, _) => bare(&host).to_owned(),
        (false, Some((name, _))) => name.to_owned(),
        (false, None) => utm_source.to_owned(),
    };

    let kind = known.map(|(_, kind)| kind);
    let medium = campaign.medium.trim().to_ascii_lowercase();
    let by_medium = match medium.as_str() {
        "cpc" | "ppc" | "paid" | "paidsearch" | "paid_search" | "paid-search" | "sem" => {
            Some(if kind == Some(Kind::Social) {
                "Paid Social"
            } else {
                "Paid Search"
            })
        }
        "paid_social" | "paidsocial" | "paid-social" | "social_paid" => Some("Paid Social"),
        m if m.contains("email") || m.contains("e-mail") || m == "newsletter" => Some("Email"),
        "social" | "social-network" | "social-media" | "social_media" | "sm" => {
            Some("Organic Social")
        }
        "display" | "banner" | "cpm" => Some("Display"),
        "affiliate" | "affiliates" => Some("Affiliates"),
        _ => None,
    };
    let channel = by_medium.unwrap_or(match kind {
        Some(Kind::Search) => "Organic Search",
        Some(Kind::Social) => "Organic Social",
        Some(Kind::Email) => "Email",
        None if internal && utm_source.is_empty() && medium.is_empty() => INTERNAL,
        None if external || !utm_source.is_empty() => "Referral",
        None => "Direct",
    });
    Referral {
        host,
        source,
        channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(referrer: &str, page: &str, utm: &[(&str, &str)]) -> (String, String, &'static str) {
        let mut campaign = Campaign::default();
        for (k, v) in utm {
            match *k {
                "source" => campaign.source = (*v).into(),
                "medium" => campaign.medium = (*v).into(),
                _ => unreachable!(),
            }
        }
        let r = classify(referrer, Some(page), &campaign);
        (r.host, r.source, r.channel)
    }

    fn owned(host: &str, source: &str, channel: &'static str) -> (String, String, &'static str) {
        (host.into(), source.into(), channel)
    }

    #[test]
    fn search_engines_social_networks_and_mail() {
        let page = "shop.example.com";
        assert_eq!(
            of("https://www.google.com/", page, &[]),
            owned("www.google.com", "Google", "Organic Search")
        );
        assert_eq!(
            of("https://www.google.co.uk/search?q=x", page, &[]),
            owned("www.google.co.uk", "Google", "Organic Search")
        );
        assert_eq!(
            of("https://duckduckgo.com/", page, &[]),
            owned("duckduckgo.com", "DuckDuckGo", "Organic Search")
        );
        assert_eq!(
            of("https://l.facebook.com/l.php?u=x", page, &[]),
            owned("l.facebook.com", "Facebook", "Organic Social")
        );
        assert_eq!(of("https://t.co/abc", page, &[]).1, "X (Twitter)");
        assert_eq!(
            of("https://mail.google.com/", page, &[]),
            owned("mail.google.com", "Gmail", "Email")
        );
        // Not Google: a "google" label deep inside another site's name.
        assert_eq!(
            of("https://google.blogs.example.org/", page, &[]),
            owned(
                "google.blogs.example.org",
                "google.blogs.example.org",
                "Referral"
            )
        );
    }

    #[test]
    fn direct_internal_and_other_referrers() {
        let page = "shop.example.com";
        assert_eq!(of("", page, &[]), owned("", "", "Direct"));
        assert_eq!(
            of("https://shop.example.com/cart", page, &[]),
            owned("shop.example.com", "", INTERNAL)
        );
        assert_eq!(
            of("https://www.shop.example.com/", page, &[]),
            owned("www.shop.example.com", "", INTERNAL)
        );
        assert_eq!(
            of("https://blog.example.org/post", page, &[]),
            owned("blog.example.org", "blog.example.org", "Referral")
        );
        assert_eq!(of("not a url", page, &[]), owned("", "", "Direct"));
    }

    #[test]
    fn campaigns_name_the_channel() {
        let page = "shop.example.com";
        assert_eq!(
            of("", page, &[("source", "newsletter"), ("medium", "email")]),
            owned("", "newsletter", "Email")
        );
        assert_eq!(
            of(
                "https://www.google.com/",
                page,
                &[("source", "google"), ("medium", "cpc")]
            ),
            owned("www.google.com", "Google", "Paid Search")
        );
        assert_eq!(
            of("", page, &[("source", "facebook"), ("medium", "cpc")]),
            owned("", "Facebook", "Paid Social")
        );
        assert_eq!(
            of("", page, &[("source", "google")]),
            owned("", "Google", "Organic Search")
        );
        assert_eq!(
            of("", page, &[("source", "partner-site")]),
            owned("", "partner-site", "Referral")
        );
        // A campaign link followed inside the site still names its campaign.
        assert_eq!(
            of(
                "https://shop.example.com/",
                page,
                &[("source", "spring"), ("medium", "banner")]
            ),
            owned("shop.example.com", "spring", "Display")
        );
    }
}
