//! User agents → browser, OS, device type and bot flag, with the patterns of the ua-parser
//! project (`uap-core` 0.18.0's `regexes.yaml`, in `processor/uap-core/`, run by the
//! `ua-parser` crate). A parse costs tens of microseconds, and a site's visitors use few
//! distinct browsers, so results are cached by the user-agent string.

use std::sync::Arc;

use quick_cache::sync::Cache;
use tally_contracts::Agent;

/// The ua-parser project's patterns (Apache-2.0; see `processor/uap-core/LICENSE`).
const REGEXES: &str = include_str!("../../uap-core/regexes.yaml");

/// Distinct user agents kept parsed. A user agent is at most 1 KiB, so the cache stays
/// under ~20 MiB even when every entry is a long one.
const CACHE_ENTRIES: usize = 16_384;

/// Parses user agents, remembering the answers.
pub struct AgentParser {
    extractor: ua_parser::Extractor<'static>,
    cache: Cache<Box<str>, Arc<Agent>>,
    /// The agent of events without a user agent (back-end events).
    none: Arc<Agent>,
}

impl AgentParser {
    pub fn new() -> anyhow::Result<Self> {
        let regexes: ua_parser::Regexes<'static> = serde_yaml::from_str(REGEXES)?;
        Ok(Self {
            extractor: ua_parser::Extractor::try_from(regexes)?,
            cache: Cache::new(CACHE_ENTRIES),
            none: Arc::default(),
        })
    }

    pub fn parse(&self, user_agent: &str) -> Arc<Agent> {
        if user_agent.is_empty() {
            return self.none.clone();
        }
        if let Some(known) = self.cache.get(user_agent) {
            return known;
        }
        let agent = Arc::new(self.parse_uncached(user_agent));
        self.cache.insert(user_agent.into(), agent.clone());
        agent
    }

    fn parse_uncached(&self, user_agent: &str) -> Agent {
        let (browser, os, device) = self.extractor.extract(user_agent);
        let major = |v: Option<&str>| v.unwrap_or_default().to_owned();
        Agent {
            browser: browser
                .as_ref()
                .map_or("Other", |b| browser_name(&b.family))
                .to_owned(),
            browser_version: major(browser.as_ref().and_then(|b| b.major)),
            os: os.as_ref().map_or("Other", |o| &*o.os).to_owned(),
            os_version: major(os.as_ref().and_then(|o| o.major.as_deref())),
            device: device_type(user_agent),
            bot: device.is_some_and(|d| d.device == "Spider"),
        }
    }
}

/// One name per browser: ua-parser tells a browser's mobile build apart by name ("Chrome
/// Mobile", "Mobile Safari"); the device column already says that.
fn browser_name(family: &str) -> &str {
    match family {
        "Chrome Mobile" | "Chrome Mobile iOS" | "Chrome Mobile WebView" => "Chrome",
        "Mobile Safari" | "Mobile Safari UI/WKWebView" => "Safari",
        "Firefox Mobile" | "Firefox iOS" => "Firefox",
        "Edge Mobile" => "Edge",
        "Opera Mobile" => "Opera",
        other => other,
    }
}

/// `tablet`, `mobile` or `desktop`, by the tokens browsers put in their user agents:
/// iPads and Android devices without "Mobile" are tablets (iPads that present themselves as
/// Macs count as desktops); "Mobi" (Mozilla's advice), iPhones and the like are phones.
fn device_type(user_agent: &str) -> &'static str {
    let has = |token: &str| user_agent.contains(token);
    if has("iPad") || has("Tablet") || has("Kindle") || has("Silk/") || has("PlayBook") {
        "tablet"
    } else if has("Mobi") || has("iPhone") || has("iPod") || has("Windows Phone") {
        "mobile"
    } else if has("Android") {
        // Android phones say "Mobile"; those that do not are tablets.
        "tablet"
    } else {
        "desktop"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(agent: &str) -> Agent {
        AgentParser::new().unwrap().parse(agent).as_ref().clone()
    }

    #[test]
    fn desktop_and_mobile_browsers() {
        let chrome = parse(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
        );
        assert_eq!(
            (chrome.browser.as_str(), chrome.browser_version.as_str()),
            ("Chrome", "156")
        );
        assert_eq!(
            (chrome.os.as_str(), chrome.device, chrome.bot),
            ("Linux", "desktop", false)
        );

        let iphone = parse(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(iphone.browser, "Safari");
        assert_eq!(
            (iphone.os.as_str(), iphone.os_version.as_str()),
            ("iOS", "17")
        );
        assert_eq!(iphone.device, "mobile");

        let ipad = parse(
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(ipad.device, "tablet");

        let android_phone = parse(
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
        );
        assert_eq!(
            (
                android_phone.browser.as_str(),
                android_phone.os.as_str(),
                android_phone.device
            ),
            ("Chrome", "Android", "mobile")
        );
        let android_tablet = parse(
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
        );
        assert_eq!(android_tablet.device, "tablet");

        let firefox = parse(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
        );
        assert_eq!(
            (
                firefox.browser.as_str(),
                firefox.browser_version.as_str(),
                firefox.os.as_str()
            ),
            ("Firefox", "128", "Windows")
        );
    }

    #[test]
    fn crawlers_are_bots_and_unknown_agents_are_other() {
        let google =
            parse("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)");
        assert!(google.bot);
        let odd = parse("definitely not a browser");
        assert_eq!(
            (odd.browser.as_str(), odd.os.as_str(), odd.bot),
            ("Other", "Other", false)
        );
        assert_eq!(parse(""), Agent::default());
    }

    #[test]
    fn the_cache_hands_out_the_same_answer() {
        let parser = AgentParser::new().unwrap();
        let agent =
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert!(Arc::ptr_eq(&parser.parse(agent), &parser.parse(agent)));
    }
}
