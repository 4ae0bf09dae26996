//! The `<noscript>` pixel on real servers: an image request with the page as its `Referer`
//! is a page view in ClickHouse, answered with a GIF; one from a page of another domain is
//! refused and stored nowhere.

use std::time::Duration;

use tally_e2e::{DATABASE, Options, Stack};

#[tokio::test]
async fn a_pixel_view_reaches_clickhouse() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let pixel = |referer: &'static str| {
        stack
            .http
            .get(stack.collector_url("/v1/pixel.gif?site_id=shop&title=No%20script"))
            .header("referer", referer)
            .send()
    };
    let taken = pixel("https://shop.example.com/noscript?utm_source=x").await?;
    assert_eq!(taken.status().as_u16(), 200);
    assert_eq!(taken.headers()["content-type"], "image/gif");
    assert!(taken.bytes().await?.starts_with(b"GIF89a"));
    // The test pipeline's sites have no domains: any page's origin is theirs. A site id the
    // pipeline does not have is refused, with the image all the same.
    let unknown = stack
        .http
        .get(stack.collector_url("/v1/pixel.gif?site_id=nope"))
        .header("referer", "https://shop.example.com/")
        .send()
        .await?;
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(unknown.headers()["content-type"], "image/gif");
    stack
        .wait_sql(
            &format!(
                "SELECT event_type, path, title FROM {DATABASE}.events WHERE site_id = 'shop' FORMAT TSV"
            ),
            "page_view\t/noscript\tNo script",
            Duration::from_secs(60),
        )
        .await?;
    Ok(())
}
