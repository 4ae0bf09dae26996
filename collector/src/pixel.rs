//! `GET /v1/pixel.gif`: a page view from an image, for pages without JavaScript:
//!
//! ```html
//! <noscript><img src="https://COLLECTOR/v1/pixel.gif?site_id=SITE_ID" alt=""></noscript>
//! ```
//!
//! The query names the site (`site_id`) and may give `url`, `referrer` and `title`; without
//! `url`, the browser's `Referer` header (the page the image is on) is the page. An image
//! request carries no `Origin`: the `Referer`'s origin stands in for it, so the site's
//! domains check the pixel as they check the tracker. The event then takes the path of every
//! event. The answer is always a 1×1 GIF (a page never shows a broken image); its status
//! says what became of the view.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::api::ApiError;

/// A transparent 1×1 GIF.
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The page view a pixel request describes, as the JSON `parse_events` reads, and the
/// origin of its `Referer` (the page's) if it has one.
pub fn event(
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(bytes::Bytes, Option<String>), ApiError> {
    let mut event = Map::new();
    event.insert("event_type".into(), Value::String("page_view".into()));
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        // Other parameters (a cache buster, say) are ignored.
        if matches!(name.as_ref(), "site_id" | "url" | "referrer" | "title") {
            event.insert(name.into_owned(), Value::String(value.into_owned()));
        }
    }
    let referer = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| url::Url::parse(v).ok());
    if let Some(page) = &referer {
        event
            .entry("url")
            .or_insert_with(|| Value::String(page.to_string()));
    }
    if !event.contains_key("url") {
        return Err(ApiError::InvalidEvent(vec![
            tally_contracts::validate::Problem {
                field: "url",
                message: "is needed: give url in the query, or let the browser send Referer".into(),
            },
        ]));
    }
    let origin = referer.map(|page| page.origin().ascii_serialization());
    let body = serde_json::to_vec(&Value::Object(event)).expect("JSON values serialize");
    Ok((body.into(), origin))
}

/// The image of every pixel answer, with the status of what became of the view (200 for
/// 202: an image is not "accepted").
pub fn image(status: StatusCode) -> Response {
    let status = if status == StatusCode::ACCEPTED {
        StatusCode::OK
    } else {
        status
    };
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        GIF,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_comes_from_the_query_or_the_referer() {
        let mut headers = HeaderMap::new();
        let (body, origin) = event(
            Some("site_id=shop&url=https%3A%2F%2Fa.example%2Fx&_=1"),
            &headers,
        )
        .unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["url"], "https://a.example/x");
        assert!(json.get("_").is_none() && origin.is_none());
        headers.insert(
            header::REFERER,
            "https://shop.example.com/pricing?x=1".parse().unwrap(),
        );
        let (body, origin) = event(Some("site_id=shop"), &headers).unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["url"], "https://shop.example.com/pricing?x=1");
        assert_eq!(origin.as_deref(), Some("https://shop.example.com"));
        assert!(event(Some("site_id=shop"), &HeaderMap::new()).is_err());
    }

    #[test]
    fn the_image_is_a_gif_of_one_pixel() {
        let response = image(StatusCode::ACCEPTED);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "image/gif");
        assert_eq!(&GIF[..6], b"GIF89a");
        assert_eq!(image(StatusCode::FORBIDDEN).status(), StatusCode::FORBIDDEN);
    }
}
