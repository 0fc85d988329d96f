//! `prometheus`: a `PromQL` check, instant or sustained over a window.
//!
//! Template values in the query are data. Inside a `PromQL` string literal (`"…"`, `'…'`) a
//! value is escaped by the string's rules (backslash, the quote, control characters), so it
//! cannot close the string and add matchers or operators; inside a raw string (`` `…` ``) a
//! value with a backtick is refused (raw strings have no escapes). Outside a string a value
//! must be a plain number or duration (`0.05`, `5m`), checked before the query is sent; a
//! value in a `#` comment is a compile error. `{{ x | safe }}` inserts trusted `PromQL` raw.
//! The `url` follows the `http` URL rules.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::{DurationText, Spanned};
use crate::template::{Escape, Holes, Piece, RenderError, Renderer, SourcePart, source_parts};

/// A `PromQL` query.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSpec {
    /// The query (a template).
    pub query: Spanned<String>,
    /// Server URL; default: the runbook's `prometheus`, else `RUNBOOK_PROMETHEUS_URL`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Sustained: the assert must hold for every sample over this window.
    // (Not doc comments: those become the JSON Schema's descriptions, pinned in `schemas/`.)
    // The query is run as a range query over `[now - for, now]` (step: a sixtieth of the window,
    // at least 1s). The engine evaluates a check's `assert` once, on the whole `result`, so a
    // sustained assert reads the extremes of every sample of every series: `result.max` and
    // `result.min` (`result.max < 0.01` means "every sample stayed under 1 %"); `result.values`
    // lists every sample, `result.samples` counts them, and `result.value` is the last sample
    // (of a single series).
    #[serde(default, rename = "for")]
    pub sustained: Option<Spanned<DurationText>>,
    /// What an empty result means.
    #[serde(default)]
    pub on_empty: OnEmpty,
}

/// Meaning of a query that returns no series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnEmpty {
    /// The check fails (default): no data is not good news.
    #[default]
    Fail,
    /// The check passes.
    Pass,
    /// The value is taken as 0.
    Zero,
}

impl Kind for PrometheusSpec {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = vec![TemplateField::new(
            "prometheus.query",
            &self.query,
            Escape::Promql,
        )];
        if let Some(url) = &self.url {
            out.push(TemplateField::new("prometheus.url", url, Escape::Url));
        }
        out
    }
    fn mutates(&self) -> bool {
        false
    }
    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![("promql".to_owned(), render_query(r, &self.query.value)?)];
        if let Some(w) = &self.sustained {
            out.push(("sustained for".to_owned(), w.value.0.clone()));
        }
        if let Some(url) = &self.url {
            out.push(("server".to_owned(), super::http::render_url(r, &url.value)?));
        }
        Ok(out)
    }
}

/// Where a value lands in a `PromQL` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Outside any string literal: only a plain number or duration is data there.
    Bare,
    /// Inside a `"…"` or `'…'` string: escaped for it.
    Quoted(char),
    /// Inside a `` `…` `` raw string, which has no escapes.
    Raw,
    /// Inside a `#` comment, which a line break would end.
    Comment,
    /// Right after a string's `\`, which would pair with the value's first escape.
    AfterBackslash,
}

/// A piece of query text: a character of the author's, or a value.
#[derive(Debug, Clone, Copy)]
enum Tok {
    Char(char),
    Hole,
}

/// The place of each hole among `toks`, read the way the `PromQL` lexer reads strings and
/// comments.
fn places(toks: &[Tok]) -> Vec<Place> {
    let mut place = Place::Bare;
    let mut escaped = false;
    let mut out = Vec::new();
    for t in toks {
        let c = match *t {
            Tok::Hole => {
                out.push(if escaped {
                    Place::AfterBackslash
                } else {
                    place
                });
                escaped = false;
                continue;
            }
            Tok::Char(c) => c,
        };
        place = match place {
            Place::Bare => match c {
                '"' | '\'' => Place::Quoted(c),
                '`' => Place::Raw,
                '#' => Place::Comment,
                _ => Place::Bare,
            },
            Place::Quoted(q) if escaped => {
                escaped = false;
                Place::Quoted(q)
            }
            Place::Quoted(q) if c == '\\' => {
                escaped = true;
                Place::Quoted(q)
            }
            Place::Quoted(q) if c == q => Place::Bare,
            Place::Raw if c == '`' => Place::Bare,
            Place::Comment if c == '\n' => Place::Bare,
            p => p,
        };
    }
    out
}

/// `text` as the inside of a `PromQL` string quoted with `quote` (Go's escapes, which `PromQL`
/// strings use): backslash, the quote and control characters are escaped.
pub fn promql_escape(text: &str, quote: char) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            // Every control character is in the BMP, so four hex digits suffice.
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `text` is a plain `PromQL` number (`42`, `-0.5`, `1e3`) or duration (`5m`, `1h30m`):
/// the only values that are data outside a string literal.
fn number_or_duration(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let number = || {
        let s = text.strip_prefix(['-', '+']).unwrap_or(text);
        let (mantissa, exponent) = match s.split_once(['e', 'E']) {
            Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
            None => (s, None),
        };
        let mantissa_ok = match mantissa.split_once('.') {
            Some((i, f)) => {
                (digits(i) || i.is_empty())
                    && (digits(f) || f.is_empty())
                    && !(i.is_empty() && f.is_empty())
            }
            None => digits(mantissa),
        };
        mantissa_ok && exponent.is_none_or(digits)
    };
    let duration = || {
        let mut rest = text;
        while !rest.is_empty() {
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return false;
            }
            rest = &rest[n..];
            let unit = ["ms", "s", "m", "h", "d", "w", "y"]
                .into_iter()
                .find(|u| rest.starts_with(u));
            let Some(unit) = unit else { return false };
            rest = &rest[unit.len()..];
        }
        !text.is_empty()
    };
    number() || duration()
}

const BARE_FIX: &str = "put the value inside a PromQL string (`{job=\"{{ params.job }}\"}`), pass a plain number or duration (`0.05`, `5m`), or mark trusted PromQL with `{{ x | safe }}`";

/// Interpolations of a query that land in a `#` comment (a line break in the value would end
/// the comment): the byte offset of each one's `{{`, what is wrong and the fix. Values outside
/// strings are checked when rendered, for they may be numbers or durations.
pub fn query_problems(text: &str) -> Vec<(usize, String, String)> {
    let mut toks = Vec::new();
    let mut offsets = Vec::new();
    for p in source_parts(text) {
        match &p {
            SourcePart::Text(t) => toks.extend(t.chars().map(Tok::Char)),
            SourcePart::Expr { .. } if p.filtered_by("safe") => toks.push(Tok::Char('x')),
            SourcePart::Expr { offset, .. } => {
                toks.push(Tok::Hole);
                offsets.push(*offset);
            }
        }
    }
    places(&toks)
        .into_iter()
        .zip(offsets)
        .filter_map(|(p, at)| match p {
            Place::Comment => Some((
                at,
                "puts a template value in a PromQL `#` comment".to_owned(),
                "remove it from the comment".to_owned(),
            )),
            Place::AfterBackslash => Some((
                at,
                "puts a template value right after a `\\` in a PromQL string".to_owned(),
                "remove the backslash: the value is escaped for the string already".to_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// Build a query from its rendered template: values in strings escaped for them, values
/// outside strings checked to be plain numbers or durations. Plan-time placeholders are shown
/// as they are.
///
/// # Errors
/// A value outside a string that is not a number or duration, a value with a backtick in a raw
/// string, a value with a line break in a comment.
pub fn build_query(holes: &Holes) -> Result<String, String> {
    let mut toks = Vec::new();
    for p in holes.pieces() {
        match p {
            Piece::Text(t) => toks.extend(t.chars().map(Tok::Char)),
            Piece::Hole(_) => toks.push(Tok::Hole),
        }
    }
    let places = places(&toks);
    let mut error = None;
    let query = holes.join(|i, v| {
        if v.placeholder {
            return v.text.clone();
        }
        let n = i + 1;
        let refuse = |what: &str| Some(format!("value {n} of the query {what}"));
        match places[i] {
            Place::Quoted(q) => return promql_escape(&v.text, q),
            Place::Bare if !number_or_duration(&v.text) => {
                error = error.take().or_else(|| {
                    refuse(&format!(
                        "is outside a PromQL string and is not a plain number or duration; {BARE_FIX}"
                    ))
                });
            }
            Place::Raw if v.text.contains('`') => {
                error = error.take().or_else(|| {
                    refuse("contains a backtick, which would end its raw `…` string; put the value in a \"…\" string instead")
                });
            }
            Place::AfterBackslash => {
                error = error.take().or_else(|| {
                    refuse("follows a `\\` in its PromQL string, which would pair with its escapes")
                });
            }
            Place::Comment if v.text.contains(['\n', '\r']) => {
                error = error
                    .take()
                    .or_else(|| refuse("contains a line break, which would end its `#` comment"));
            }
            _ => {}
        }
        v.text.clone()
    });
    match error {
        Some(e) => Err(e),
        None => Ok(query),
    }
}

/// Render a query template and build it with [`build_query`].
///
/// # Errors
/// When the template does not render, or a value could not be data where it is.
pub fn render_query(r: &Renderer<'_>, text: &str) -> Result<String, RenderError> {
    let holes = r.holes(text)?;
    build_query(&holes).map_err(RenderError::invalid)
}

/// Environment variable naming the Prometheus server when neither the check nor the runbook does.
pub const URL_ENV: &str = "RUNBOOK_PROMETHEUS_URL";

/// Bytes of an unexpected (non-JSON) answer quoted in an error.
const EXCERPT: usize = 300;

/// A JSON number for a sample: NaN has none (null, and it is left out of `min`/`max`), infinities
/// become the largest finite values so comparisons keep their meaning.
fn json_number(v: f64) -> serde_json::Value {
    if v.is_nan() {
        serde_json::Value::Null
    } else if v.is_infinite() {
        serde_json::json!(if v > 0.0 { f64::MAX } else { f64::MIN })
    } else {
        serde_json::json!(v)
    }
}

/// A sample value as Prometheus writes it: `[timestamp, "1.5"]`.
fn sample_value(pair: &serde_json::Value) -> Option<f64> {
    let text = pair.get(1)?.as_str()?;
    text.parse::<f64>().ok()
}

/// One series of an answer: its labels and its samples, in time order.
struct Series {
    labels: serde_json::Value,
    samples: Vec<f64>,
}

/// The samples of a `vector` or `matrix` answer, per series.
fn series_of(result: &serde_json::Value) -> Vec<Series> {
    result
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    let labels = item
                        .get("metric")
                        .cloned()
                        .unwrap_or_else(|| serde_json::json!({}));
                    let samples =
                        if let Some(values) = item.get("values").and_then(|v| v.as_array()) {
                            values.iter().filter_map(sample_value).collect()
                        } else {
                            item.get("value")
                                .and_then(sample_value)
                                .into_iter()
                                .collect()
                        };
                    Series { labels, samples }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The smallest and largest samples, NaN left out (`None` when every sample is NaN).
fn extremes(samples: &[f64]) -> Option<(f64, f64)> {
    samples
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// A number for a summary line.
fn short(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// How a query is run: at one instant, or over a window.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Instant,
    Range {
        window: std::time::Duration,
        step: std::time::Duration,
    },
}

impl PrometheusSpec {
    /// The server: the check's `url`, else the runbook's `prometheus`, else `RUNBOOK_PROMETHEUS_URL`.
    fn server(&self, ctx: &crate::exec::ActionCtx) -> Result<String, crate::exec::ActionError> {
        use crate::exec::ActionError;
        let r = ctx.renderer();
        let render = |t: &str| {
            super::http::render_url(&r, t)
                .map(|s| s.trim().to_owned())
                .map_err(|e| ActionError::Failed(e.to_string()))
        };
        let url = if let Some(u) = &self.url {
            render(&u.value)?
        } else if let Some(u) = &ctx.runbook().runbook.prometheus {
            render(&u.value)?
        } else {
            std::env::var(URL_ENV).unwrap_or_default().trim().to_owned()
        };
        if url.is_empty() {
            return Err(ActionError::Failed(format!(
                "no Prometheus server for this check: give it `url:`, set the runbook's \
                 `prometheus:`, or set {URL_ENV}"
            )));
        }
        Ok(url.trim_end_matches('/').to_owned())
    }

    fn mode(&self) -> Result<Mode, crate::exec::ActionError> {
        let Some(w) = &self.sustained else {
            return Ok(Mode::Instant);
        };
        let window = crate::duration::parse(&w.value.0).map_err(|e| {
            crate::exec::ActionError::Failed(format!("invalid `for: {}`: {e}", w.value.0))
        })?;
        let step = (window / 60).max(std::time::Duration::from_secs(1));
        Ok(Mode::Range { window, step })
    }
}

/// Seconds since the epoch, as Prometheus reads them.
fn epoch_seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Build the result of a successful answer.
fn result_of(
    spec: &PrometheusSpec,
    data: &serde_json::Value,
    mode: Mode,
    base: serde_json::Value,
) -> Result<crate::exec::ActionResult, crate::exec::ActionError> {
    let result_type = data
        .get("resultType")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_owned();
    let raw = data
        .get("result")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let mut value = base;
    value["result_type"] = serde_json::json!(result_type);
    if let Mode::Range { window, step } = mode {
        value["window"] = serde_json::json!(crate::duration::format(window));
        value["step"] = serde_json::json!(crate::duration::format(step));
    }
    // A string answer has no numbers: hand it over as it is.
    if result_type == "string" {
        let text = raw.get(1).cloned().unwrap_or(serde_json::Value::Null);
        value["value"] = text.clone();
        value["empty"] = serde_json::json!(false);
        return Ok(crate::exec::ActionResult {
            value,
            ok: true,
            summary: format!("string {text}"),
            exit_code: None,
            http_status: None,
        });
    }
    let series: Vec<Series> = if result_type == "scalar" {
        vec![Series {
            labels: serde_json::json!({}),
            samples: sample_value(&raw).into_iter().collect(),
        }]
    } else {
        series_of(&raw)
            .into_iter()
            .filter(|s| !s.samples.is_empty())
            .collect()
    };
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .collect();
    let when = match mode {
        Mode::Instant => String::new(),
        Mode::Range { window, .. } => format!(" over {}", crate::duration::format(window)),
    };
    if all.is_empty() {
        value["empty"] = serde_json::json!(true);
        value["series"] = serde_json::json!([]);
        value["values"] = serde_json::json!([]);
        value["samples"] = serde_json::json!(0);
        let (ok, summary) = match spec.on_empty {
            // An error rather than `ok: false`, so that no `assert` can turn it into a pass.
            // The query is named: a wrong metric or label name is the usual cause, and the
            // check's name alone does not show which query of a runbook found nothing.
            OnEmpty::Fail => {
                let query = value
                    .get("query")
                    .and_then(serde_json::Value::as_str)
                    .map(|q| format!(": `{q}`"))
                    .unwrap_or_default();
                return Err(crate::exec::ActionError::Failed(format!(
                    "query returned no data{when} (on_empty: fail){query}"
                )));
            }
            OnEmpty::Pass => {
                value["value"] = serde_json::Value::Null;
                (
                    true,
                    format!("query returned no data{when} (on_empty: pass)"),
                )
            }
            OnEmpty::Zero => {
                value["value"] = serde_json::json!(0.0);
                value["min"] = serde_json::json!(0.0);
                value["max"] = serde_json::json!(0.0);
                value["values"] = serde_json::json!([0.0]);
                (
                    true,
                    format!("query returned no data{when}; value 0 (on_empty: zero)"),
                )
            }
        };
        return Ok(crate::exec::ActionResult {
            value,
            ok,
            summary,
            exit_code: None,
            http_status: None,
        });
    }
    let (min, max) = extremes(&all).unwrap_or((f64::NAN, f64::NAN));
    value["empty"] = serde_json::json!(false);
    value["samples"] = serde_json::json!(all.len());
    value["values"] = serde_json::Value::Array(all.iter().copied().map(json_number).collect());
    if !min.is_nan() {
        value["min"] = json_number(min);
        value["max"] = json_number(max);
    }
    value["series"] = serde_json::Value::Array(
        series
            .iter()
            .map(|s| {
                let last = s.samples.last().copied().unwrap_or(f64::NAN);
                let mut out = serde_json::json!({"labels": s.labels, "value": json_number(last)});
                if matches!(mode, Mode::Range { .. }) || s.samples.len() > 1 {
                    out["values"] = serde_json::Value::Array(
                        s.samples.iter().copied().map(json_number).collect(),
                    );
                    if let Some((lo, hi)) = extremes(&s.samples) {
                        out["min"] = json_number(lo);
                        out["max"] = json_number(hi);
                    }
                }
                out
            })
            .collect(),
    );
    let summary = if series.len() == 1 {
        let last = series[0].samples.last().copied().unwrap_or(f64::NAN);
        value["value"] = json_number(last);
        if let Mode::Range { .. } = mode {
            format!(
                "{} samples{when}: min {}, max {}, last {}",
                all.len(),
                short(min),
                short(max),
                short(last)
            )
        } else {
            format!("value {}", short(last))
        }
    } else if let Mode::Range { .. } = mode {
        format!(
            "{} series, {} samples{when}: min {}, max {}",
            series.len(),
            all.len(),
            short(min),
            short(max)
        )
    } else {
        format!(
            "{} series: min {}, max {}",
            series.len(),
            short(min),
            short(max)
        )
    };
    Ok(crate::exec::ActionResult {
        value,
        ok: true,
        summary,
        exit_code: None,
        http_status: None,
    })
}

impl super::Perform for PrometheusSpec {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::ActionError;
            let query = render_query(&ctx.renderer(), &self.query.value)
                .map_err(|e| ActionError::Failed(ctx.mask(&e.to_string())))?;
            let server = self.server(ctx)?;
            let mode = self.mode()?;
            let (path, params) = match mode {
                Mode::Instant => ("api/v1/query", vec![("query", query.clone())]),
                Mode::Range { window, step } => {
                    let end = crate::clock::now_ms();
                    let start = end - i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
                    (
                        "api/v1/query_range",
                        vec![
                            ("query", query.clone()),
                            ("start", epoch_seconds(start)),
                            ("end", epoch_seconds(end)),
                            ("step", format!("{}ms", step.as_millis())),
                        ],
                    )
                }
            };
            let mut url = reqwest::Url::parse(&format!("{server}/{path}")).map_err(|e| {
                ActionError::Failed(
                    ctx.mask(&format!("invalid Prometheus server URL `{server}`: {e}")),
                )
            })?;
            url.query_pairs_mut().extend_pairs(&params);
            let timeout = ctx.timeout().min(std::time::Duration::from_secs(30));
            ctx.note_command(&format!("GET {url}"));
            let req = ctx.http().get(url.clone()).timeout(timeout);
            let exchange = async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, bytes))
            };
            let mut cancel = ctx.cancelled();
            let answer = tokio::select! {
                r = exchange => r,
                () = cancel.wait() => return Err(ActionError::Cancelled),
            };
            let (status, bytes) = answer.map_err(|e| {
                ActionError::Failed(ctx.mask(&format!(
                    "failed to query Prometheus at {server}: {}",
                    super::http::describe_error(&e, timeout)
                )))
            })?;
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT)]).into_owned();
                return Err(ActionError::Failed(ctx.mask(&format!(
                    "unexpected answer from Prometheus at {server} (HTTP {status}, not the \
                     Prometheus API): {}",
                    text.trim()
                ))));
            };
            if body.get("status").and_then(|s| s.as_str()) != Some("success") {
                let kind = body
                    .get("errorType")
                    .and_then(|s| s.as_str())
                    .unwrap_or("error");
                let error = body
                    .get("error")
                    .and_then(|s| s.as_str())
                    .unwrap_or("no error message");
                return Err(ActionError::Failed(ctx.mask(&format!(
                    "Prometheus at {server} rejected the query `{query}` (HTTP {status}): \
                     {kind}: {error}"
                ))));
            }
            let base = serde_json::json!({
                "query": ctx.mask(&query),
                "url": ctx.mask(&server),
                "warnings": body.get("warnings").cloned().unwrap_or_else(|| serde_json::json!([])),
            });
            let data = body.get("data").cloned().unwrap_or(serde_json::Value::Null);
            let mut result = result_of(self, &data, mode, base)?;
            result.summary = ctx.mask(&result.summary);
            Ok(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Mode, OnEmpty, PrometheusSpec, result_of};
    use serde_json::json;

    fn spec(on_empty: OnEmpty) -> PrometheusSpec {
        let mut s: PrometheusSpec =
            serde_json::from_value(json!({"query": "up"})).expect("spec parses");
        s.on_empty = on_empty;
        s
    }

    fn shape(data: &serde_json::Value, mode: Mode) -> crate::exec::ActionResult {
        result_of(&spec(OnEmpty::Fail), data, mode, json!({})).expect("a result")
    }

    #[test]
    fn scalar_and_single_series_give_a_value() {
        let r = shape(
            &json!({"resultType": "scalar", "result": [1.0, "0.25"]}),
            Mode::Instant,
        );
        assert_eq!(r.value["value"], json!(0.25));
        assert_eq!(r.summary, "value 0.25");
        let r = shape(
            &json!({"resultType": "vector", "result": [
                {"metric": {"job": "a"}, "value": [1.0, "3"]}]}),
            Mode::Instant,
        );
        assert_eq!(r.value["value"], json!(3.0));
        assert_eq!(r.value["series"][0]["labels"]["job"], "a");
    }

    #[test]
    fn range_answers_flatten_every_sample_and_keep_nan_out_of_the_extremes() {
        let step = std::time::Duration::from_secs(1);
        let r = shape(
            &json!({"resultType": "matrix", "result": [
                {"metric": {"code": "200"}, "values": [[1.0, "1"], [2.0, "NaN"], [3.0, "2"]]},
                {"metric": {"code": "500"}, "values": [[1.0, "+Inf"], [2.0, "-1"]]}]}),
            Mode::Range {
                window: step * 10,
                step,
            },
        );
        assert_eq!(r.value["samples"], 5);
        assert_eq!(r.value["min"], json!(-1.0));
        assert_eq!(r.value["max"], json!(f64::MAX));
        assert_eq!(r.value["values"], json!([1.0, null, 2.0, f64::MAX, -1.0]));
        assert!(r.value.get("value").is_none(), "{}", r.value);
        assert_eq!(r.value["series"][0]["max"], json!(2.0));
        assert_eq!(r.value["window"], "10s");
    }

    #[test]
    fn empty_answers_follow_on_empty() {
        let data = json!({"resultType": "vector", "result": []});
        let err =
            result_of(&spec(OnEmpty::Fail), &data, Mode::Instant, json!({})).expect_err("fails");
        assert_eq!(err.to_string(), "query returned no data (on_empty: fail)");
        let r = result_of(&spec(OnEmpty::Pass), &data, Mode::Instant, json!({})).expect("passes");
        assert!(r.ok);
        assert_eq!(r.value["empty"], true);
        assert!(r.value["value"].is_null());
        let r = result_of(&spec(OnEmpty::Zero), &data, Mode::Instant, json!({})).expect("zero");
        assert!(r.ok);
        assert_eq!(r.value["value"], json!(0.0));
    }
}

#[cfg(test)]
mod query_tests {
    use super::{build_query, number_or_duration, promql_escape, query_problems};
    use crate::template::Renderer;

    fn query(template: &str, v: &str) -> Result<String, String> {
        let r = Renderer::new(minijinja::context! { params => minijinja::context! { v => v } });
        build_query(&r.holes(template).expect("renders"))
    }

    #[test]
    fn values_in_strings_are_escaped_for_their_quote() {
        assert_eq!(
            query(r#"x{job="{{ params.v }}"}"#, "\"} or vector(1) #").unwrap(),
            r#"x{job="\"} or vector(1) #"}"#
        );
        assert_eq!(
            query("x{job='{{ params.v }}'}", "a'b\"\\\n\u{1}").unwrap(),
            r#"x{job='a\'b"\\\n\u0001'}"#
        );
        assert_eq!(promql_escape("\\\"", '"'), r#"\\\""#);
        // An escaped quote of the author's does not end the string.
        assert_eq!(
            query(r#"x{job="a\"{{ params.v }}"}"#, "\"").unwrap(),
            r#"x{job="a\"\""}"#
        );
        let re =
            Renderer::new(minijinja::context! { params => minijinja::context! { v => "a.b(c)" } });
        let h = re
            .holes(r#"x{job=~"{{ params.v | regex_escape }}"}"#)
            .unwrap();
        assert_eq!(build_query(&h).unwrap(), r#"x{job=~"a\\.b\\(c\\)"}"#);
    }

    #[test]
    fn bare_values_must_be_numbers_or_durations() {
        assert_eq!(query("x > {{ params.v }}", "0.05").unwrap(), "x > 0.05");
        assert_eq!(
            query("rate(x[{{ params.v }}])", "1h30m").unwrap(),
            "rate(x[1h30m])"
        );
        let e = query("x > {{ params.v }}", "0 or vector(1)").unwrap_err();
        assert!(
            e.contains("value 1 of the query is outside a PromQL string"),
            "{e}"
        );
        assert!(query("{{ params.v | safe }}", "up or vector(1)").is_ok());
        for ok in ["1", "-2.5", ".5", "1e3", "5m", "10ms", "1y2w"] {
            assert!(number_or_duration(ok), "{ok}");
        }
        for bad in ["", ".", "1m x", "5 m", "1e", "NaN", "x", "1)", "5mm"] {
            assert!(!number_or_duration(bad), "{bad}");
        }
    }

    #[test]
    fn raw_strings_and_comments_refuse_what_would_end_them() {
        assert!(query("x{job=`{{ params.v }}`}", "a\\\"b").is_ok());
        assert!(query("x{job=`{{ params.v }}`}", "a` or vector(1) #").is_err());
        assert!(query("x # {{ params.v }}\n", "a\nvector(1)").is_err());
        assert!(query(r#"x{a="\{{ params.v }}"}"#, "\" or vector(1) #").is_err());
        assert_eq!(query_problems(r#"x{a="\{{ params.v }}"}"#)[0].0, 6);
        assert_eq!(
            query_problems("up # {{ params.v }}\n{x=\"#{{ params.v }}\"}"),
            vec![(
                5,
                "puts a template value in a PromQL `#` comment".to_owned(),
                "remove it from the comment".to_owned()
            )]
        );
    }
}
