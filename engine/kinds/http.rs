//! `http`: an HTTP request as an action (webhooks, DNS APIs) or a check (health endpoints).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::{DurationText, Spanned};
use crate::template::{Escape, RenderError, Renderer};

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
        let mut out = vec![TemplateField::new("http.url", &self.url, Escape::None)];
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
                r.render(&self.url.value, Escape::None)?
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
            let url = r.render(&self.url.value, Escape::None).map_err(fail)?;
            let method = reqwest::Method::from_bytes(self.method().as_str().as_bytes())
                .map_err(|e| ActionError::Failed(e.to_string()))?;
            let timeout = match &self.timeout {
                Some(t) => crate::duration::parse(&t.value.0).unwrap_or(ctx.timeout()),
                None => ctx.timeout().min(std::time::Duration::from_secs(30)),
            };
            ctx.note_command(&format!("{} {url}", self.method().as_str()));
            let mut req = ctx.http().request(method, &url).timeout(timeout);
            for (k, v) in &self.headers {
                req = req.header(k.as_str(), r.render(&v.value, Escape::None).map_err(fail)?);
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
