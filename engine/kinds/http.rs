//! `http`: an HTTP request as an action (webhooks, DNS APIs) or a check (health endpoints).
//!
//! Template values in a URL are data: in the path each is one percent-encoded segment part (a
//! value `../admin` or `a/b` cannot add or remove a segment), in the query and fragment a
//! percent-encoded component (it cannot add a parameter). The scheme and host are written
//! literally, or come whole from a template that starts the URL (`{{ params.base }}/api/…`); a
//! port template must render a port number. `| safe` inserts trusted text raw. Header values
//! with CR, LF or NUL are refused.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::{DurationText, Spanned};
use crate::template::{Escape, Holes, Piece, RenderError, Renderer, SourcePart, source_parts};

/// What a value in a URL keeps unencoded: RFC 3986's unreserved characters only.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The part of a URL the text has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlPart {
    /// Before `://`.
    Scheme,
    /// Host (and user info).
    Host,
    /// After the host's `:`.
    Port,
    /// After the authority, before `?`.
    Path,
    /// After `?`.
    Query,
    /// After `#`.
    Fragment,
}

impl UrlPart {
    /// The part after `text` is read from this one.
    fn after(mut self, text: &str) -> Self {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if self == UrlPart::Scheme && bytes[i..].starts_with(b"://") {
                self = UrlPart::Host;
                i += 3;
                continue;
            }
            self = match (self, bytes[i]) {
                (UrlPart::Host, b':') => UrlPart::Port,
                (UrlPart::Host | UrlPart::Port, b'/') => UrlPart::Path,
                (UrlPart::Host | UrlPart::Port | UrlPart::Path, b'?') => UrlPart::Query,
                (UrlPart::Host | UrlPart::Port | UrlPart::Path | UrlPart::Query, b'#') => {
                    UrlPart::Fragment
                }
                (p, _) => p,
            };
            i += 1;
        }
        self
    }
}

const HOST_FIX: &str = "write the scheme and host literally (`https://api.example.com/{{ params.id }}`), or start the URL with one template for its base (`{{ params.base_url }}/items/{{ params.id }}`); `{{ x | safe }}` inserts trusted text raw";

/// Interpolations of a URL template that would decide its scheme or host: the byte offset of
/// each one's `{{`, what is wrong and the fix.
pub fn url_problems(text: &str) -> Vec<(usize, String, String)> {
    let parts = source_parts(text);
    let mut part = UrlPart::Scheme;
    let mut out = Vec::new();
    let mut first = true;
    for p in &parts {
        match p {
            SourcePart::Text(t) => {
                if !(first && t.trim().is_empty()) {
                    first = false;
                    part = part.after(t);
                }
            }
            SourcePart::Expr { .. } if p.filtered_by("safe") => first = false,
            SourcePart::Expr { offset, .. } => {
                if first {
                    // The URL's base: scheme and host come whole from it.
                    part = UrlPart::Path;
                } else if matches!(part, UrlPart::Scheme | UrlPart::Host) {
                    out.push((
                        *offset,
                        "puts a template value in the scheme or host of a partly literal URL"
                            .to_owned(),
                        HOST_FIX.to_owned(),
                    ));
                }
                first = false;
            }
        }
    }
    out
}

/// Build a URL from its rendered template: the base template raw, every other value
/// percent-encoded for its part, and then checked to have changed nothing but its own part.
///
/// # Errors
/// A value in the scheme or host, a port that is not a number, or a value that changes the
/// URL's host, path segments or query parameters.
pub fn build_url(holes: &Holes) -> Result<String, String> {
    let mut part = UrlPart::Scheme;
    let mut url = String::new();
    let mut skeleton = String::new();
    let mut first = true;
    let mut placeholders = false;
    for piece in holes.pieces() {
        match piece {
            Piece::Text(t) => {
                url.push_str(t);
                skeleton.push_str(t);
                if !(first && t.trim().is_empty()) {
                    first = false;
                    part = part.after(t);
                }
            }
            Piece::Hole(i) => {
                let v = &holes.values[*i];
                placeholders |= v.placeholder;
                if first || v.placeholder {
                    url.push_str(&v.text);
                    skeleton.push_str(&v.text);
                    if first {
                        part = UrlPart::Path;
                    }
                    first = false;
                    continue;
                }
                match part {
                    UrlPart::Scheme | UrlPart::Host => {
                        return Err(format!(
                            "a template value decides the scheme or host of the URL; {HOST_FIX}"
                        ));
                    }
                    UrlPart::Port => {
                        if v.text.parse::<u16>().is_err() {
                            return Err(format!(
                                "value {} in the URL's port is not a port number: `{}`",
                                i + 1,
                                v.text
                            ));
                        }
                        url.push_str(&v.text);
                        skeleton.push('1');
                    }
                    UrlPart::Path | UrlPart::Query | UrlPart::Fragment => {
                        url.extend(utf8_percent_encode(&v.text, COMPONENT));
                        skeleton.push('x');
                    }
                }
            }
        }
    }
    if placeholders {
        return Ok(url);
    }
    // Whatever the encoding, check the outcome: the values may change only their own parts.
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    if let Ok(shape) = reqwest::Url::parse(&skeleton) {
        let segments = |u: &reqwest::Url| u.path_segments().map(Iterator::count);
        let keys = |u: &reqwest::Url| u.query_pairs().count();
        if shape.scheme() != parsed.scheme()
            || shape.host_str() != parsed.host_str()
            || segments(&shape) != segments(&parsed)
            || keys(&shape) != keys(&parsed)
        {
            return Err(format!(
                "a template value changes the structure of the URL `{url}` (its host, path segments or query parameters); values may only fill their own segment or parameter"
            ));
        }
    }
    Ok(url)
}

/// Render a URL template and build it with [`build_url`].
///
/// # Errors
/// When the template does not render, or a value would change the URL's structure.
pub fn render_url(r: &Renderer<'_>, text: &str) -> Result<String, RenderError> {
    let holes = r.holes(text)?;
    build_url(&holes).map_err(RenderError::invalid)
}

/// Refuse a header value that could end the header (CR, LF) or is not valid in one (NUL).
fn header_value(name: &str, value: String) -> Result<String, String> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(format!(
            "the value of header `{name}` contains a line break or NUL, which would end the header; refusing to send it"
        ));
    }
    Ok(value)
}

/// An HTTP request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Method (default GET).
    #[serde(default)]
    pub method: Option<Spanned<HttpMethod>>,
    /// URL (a template).
    pub url: Spanned<String>,
    /// Request headers (values are templates).
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// A JSON body; string values inside are templates.
    #[serde(default)]
    pub json: Option<Spanned<serde_json::Value>>,
    /// A raw body (a template).
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    /// Limit for one request (default 30s).
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl HttpMethod {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

impl HttpSpec {
    /// The method, GET unless said otherwise.
    pub fn method(&self) -> HttpMethod {
        self.method.as_ref().map_or(HttpMethod::Get, |m| m.value)
    }
}

/// Every string inside a JSON value, with its path, for checking and rendering.
pub(crate) fn json_strings<'a>(
    prefix: &str,
    value: &'a serde_json::Value,
    out: &mut Vec<(String, &'a str)>,
) {
    match value {
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s)),
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                json_strings(&format!("{prefix}[{i}]"), v, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                json_strings(&format!("{prefix}.{k}"), v, out);
            }
        }
        _ => {}
    }
}

/// Render every string inside a JSON value; keys stay as written.
///
/// # Errors
/// When a string is not a valid template for the context.
pub fn render_json(
    r: &Renderer<'_>,
    value: &serde_json::Value,
) -> Result<serde_json::Value, RenderError> {
    Ok(match value {
        serde_json::Value::String(s) => serde_json::Value::String(r.render(s, Escape::None)?),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| render_json(r, v))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(r, v)?)))
                .collect::<Result<_, RenderError>>()?,
        ),
        other => other.clone(),
    })
}

impl Kind for HttpSpec {
    fn name(&self) -> &'static str {
        "http"
    }

    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = vec![TemplateField::new("http.url", &self.url, Escape::Url)];
        for (k, v) in &self.headers {
            out.push(TemplateField::new(
                format!("http.headers.{k}"),
                v,
                Escape::None,
            ));
        }
        if let Some(body) = &self.body {
            out.push(TemplateField::new("http.body", body, Escape::None));
        }
        if let Some(json) = &self.json {
            let mut strings = Vec::new();
            json_strings("http.json", &json.value, &mut strings);
            out.extend(strings.into_iter().map(|(field, text)| TemplateField {
                field,
                text,
                span: json.span,
                escape: Escape::None,
            }));
        }
        out
    }

    fn mutates(&self) -> bool {
        !matches!(self.method(), HttpMethod::Get | HttpMethod::Head)
    }

    fn idempotent(&self) -> bool {
        !matches!(self.method(), HttpMethod::Post | HttpMethod::Patch)
    }

    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![(
            "http".to_owned(),
            format!(
                "{} {}",
                self.method().as_str(),
                render_url(r, &self.url.value)?
            ),
        )];
        for (k, v) in &self.headers {
            out.push((format!("header {k}"), r.render(&v.value, Escape::None)?));
        }
        if let Some(json) = &self.json {
            let rendered = render_json(r, &json.value)?;
            out.push(("json".to_owned(), rendered.to_string()));
        }
        if let Some(body) = &self.body {
            out.push(("body".to_owned(), r.render(&body.value, Escape::None)?));
        }
        Ok(out)
    }
}

/// Why a request got no answer, in one clause: timeout, connection, or the innermost cause.
pub(crate) fn describe_error(e: &reqwest::Error, timeout: std::time::Duration) -> String {
    let why = if e.is_timeout() {
        format!("no response within {}", crate::duration::format(timeout))
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut innermost = None;
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        innermost = Some(s.to_string());
        src = s.source();
    }
    match innermost {
        Some(cause) => format!("{why} ({cause})"),
        None => why,
    }
}

/// Bytes of a response body kept in `result.body`.
const BODY_LIMIT: usize = 1 << 20;

impl super::Perform for HttpSpec {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::{ActionError, ActionResult};
            let r = ctx.renderer();
            let fail = |e: RenderError| ActionError::Failed(e.to_string());
            let url = render_url(&r, &self.url.value)
                .map_err(|e| ActionError::Failed(ctx.mask(&e.to_string())))?;
            let method = reqwest::Method::from_bytes(self.method().as_str().as_bytes())
                .map_err(|e| ActionError::Failed(e.to_string()))?;
            let timeout = match &self.timeout {
                Some(t) => crate::duration::parse(&t.value.0).unwrap_or(ctx.timeout()),
                None => ctx.timeout().min(std::time::Duration::from_secs(30)),
            };
            ctx.note_command(&format!("{} {url}", self.method().as_str()));
            let mut req = ctx.http().request(method, &url).timeout(timeout);
            for (k, v) in &self.headers {
                let value = r.render(&v.value, Escape::None).map_err(fail)?;
                let value = header_value(k, value).map_err(ActionError::Failed)?;
                req = req.header(k.as_str(), value);
            }
            if let Some(json) = &self.json {
                req = req.json(&render_json(&r, &json.value).map_err(fail)?);
            } else if let Some(body) = &self.body {
                req = req.body(r.render(&body.value, Escape::None).map_err(fail)?);
            }
            let mut cancel = ctx.cancelled();
            let resp = tokio::select! {
                r = req.send() => r,
                () = cancel.wait() => return Err(ActionError::Cancelled),
            };
            let resp = resp.map_err(|e| {
                ActionError::Failed(ctx.mask(&format!(
                    "failed to {} {url}: {}",
                    self.method().as_str(),
                    describe_error(&e, timeout)
                )))
            })?;
            let status = resp.status().as_u16();
            let headers: serde_json::Map<String, serde_json::Value> = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        serde_json::Value::String(
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        ),
                    )
                })
                .collect();
            let bytes = resp.bytes().await.map_err(|e| {
                ActionError::Failed(format!("failed to read the response body: {e}"))
            })?;
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(BODY_LIMIT)]).into_owned();
            let mut value = serde_json::json!({
                "status": status,
                "headers": headers,
                "body": ctx.mask(&body),
            });
            if let Ok(j) = serde_json::from_str::<serde_json::Value>(&body) {
                value["json"] = j;
            }
            let ok = (200..300).contains(&status);
            Ok(ActionResult {
                value,
                ok,
                summary: format!("HTTP {status}"),
                exit_code: None,
                http_status: Some(status),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::UrlPart;

    /// Found by `tests/fuzz.rs`: a URL text with a multi-byte character before `://` was sliced
    /// inside the character and panicked.
    #[test]
    fn url_parts_are_read_over_multi_byte_text() {
        assert_eq!(UrlPart::Scheme.after("A\u{dcf}http://h"), UrlPart::Host);
        assert_eq!(UrlPart::Scheme.after("é://h/p?q"), UrlPart::Query);
        assert_eq!(UrlPart::Scheme.after("ht\u{2603}tp"), UrlPart::Scheme);
    }
}
