//! `sql`: statements against `PostgreSQL`, as an action (DDL/DML) or a check (a query + assert).
//!
//! `result` is `{rows, row_count, affected, columns}`: `rows` a list of column → value maps,
//! `columns` their names in order, `affected` the row count of the server's command tags
//! (rows changed by INSERT/UPDATE/DELETE…, rows returned by a SELECT). Values: integers and
//! floats as numbers, `bool`, text, `json`/`jsonb` as JSON, `numeric` as an exact string,
//! `timestamptz` as RFC 3339 (`…Z`), `timestamp`/`date`/`time` as ISO 8601, `interval` as an
//! ISO 8601 duration, `uuid`, `inet`, `bytea` (`\x…`), enums and arrays; NULL as null. A
//! column of another type is read as the server's text when the query has no `params`, and
//! refused (name and type given, cast it) when it has.
//!
//! One statement is prepared first (nothing runs if it does not parse), then executed once with
//! its `params` sent in text format, for the server to read as whatever type it inferred.
//! Several statements (no `params`) go through the simple protocol, their values as text.
//! `transaction: true` wraps the whole in `BEGIN`/`COMMIT`, rolled back on any error. The
//! timeout covers connecting and running; when it passes, or the run is cancelled, the server
//! is asked to cancel the statement. Plain TCP only for now (`sslmode=require` is refused).
//!
//! Template values in `query` are data: each `{{ … }}` outside quotes becomes a bound parameter
//! (`$n`, numbered after the written `params`), so it can never be SQL. A template inside a
//! quoted literal (`'…'`), a quoted identifier (`"…"`), a dollar-quoted string or a comment is a
//! compile error; a value that names something goes through `| ident` (a quoted identifier,
//! inner `"` doubled), and `| safe` inserts trusted text raw.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::{DurationText, Spanned};
use crate::template::shell::Tok;
use crate::template::{Escape, Piece, RenderError, Renderer, SourcePart, source_parts};

/// Where SQL text is, for deciding where a value may be bound.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SqlState {
    Code,
    /// `'…'`; `true` for `E'…'` (backslash escapes).
    Literal(bool),
    Ident,
    Dollar(String),
    LineComment,
    BlockComment(u32),
}

/// For each hole of `toks`: `None` if it may become a bound parameter, or the quoted place it
/// sits in.
fn sql_places(toks: &[Tok]) -> Vec<Option<&'static str>> {
    let c = |i: usize| match toks.get(i) {
        Some(Tok::Char(c)) => Some(*c),
        _ => None,
    };
    let mut out = Vec::new();
    let mut state = SqlState::Code;
    let mut i = 0;
    while i < toks.len() {
        let here = c(i);
        match (&mut state, here) {
            (SqlState::Code, None) => out.push(None),
            (SqlState::Literal(_), None) => out.push(Some("inside a quoted SQL literal `'…'`")),
            (SqlState::Ident, None) => out.push(Some("inside a quoted SQL identifier `\"…\"`")),
            (SqlState::Dollar(_), None) => out.push(Some("inside a dollar-quoted SQL string")),
            (SqlState::LineComment | SqlState::BlockComment(_), None) => {
                out.push(Some("inside an SQL comment"));
            }
            (SqlState::Code, Some('\'')) => {
                let e = i > 0
                    && matches!(c(i - 1), Some('e' | 'E'))
                    && !matches!(c(i.wrapping_sub(2)), Some(p) if p.is_alphanumeric() || p == '_');
                state = SqlState::Literal(e);
            }
            (SqlState::Code, Some('"')) => state = SqlState::Ident,
            (SqlState::Code, Some('-')) if c(i + 1) == Some('-') => {
                state = SqlState::LineComment;
                i += 1;
            }
            (SqlState::Code, Some('/')) if c(i + 1) == Some('*') => {
                state = SqlState::BlockComment(1);
                i += 1;
            }
            (SqlState::Code, Some('$')) => {
                // `$tag$` or `$$` opens a dollar-quoted string; `$1` is a parameter.
                let mut j = i + 1;
                let mut tag = String::new();
                while let Some(ch) = c(j) {
                    if ch == '$' {
                        break;
                    }
                    if !(ch.is_alphanumeric() || ch == '_') || (j == i + 1 && ch.is_ascii_digit()) {
                        tag.clear();
                        j = usize::MAX;
                        break;
                    }
                    tag.push(ch);
                    j += 1;
                }
                if j != usize::MAX && c(j) == Some('$') {
                    state = SqlState::Dollar(format!("${tag}$"));
                    i = j;
                }
            }
            (SqlState::Literal(e), Some('\\')) if *e => i += 1,
            (SqlState::Literal(_), Some('\'')) => {
                if c(i + 1) == Some('\'') {
                    i += 1;
                } else {
                    state = SqlState::Code;
                }
            }
            (SqlState::Ident, Some('"')) => {
                if c(i + 1) == Some('"') {
                    i += 1;
                } else {
                    state = SqlState::Code;
                }
            }
            (SqlState::Dollar(tag), Some('$')) => {
                let tag_len = tag.chars().count();
                let matches = tag.chars().enumerate().all(|(k, t)| c(i + k) == Some(t));
                if matches {
                    i += tag_len - 1;
                    state = SqlState::Code;
                }
            }
            (SqlState::LineComment, Some('\n')) => state = SqlState::Code,
            (SqlState::BlockComment(depth), Some('*')) if c(i + 1) == Some('/') => {
                *depth -= 1;
                i += 1;
                if *depth == 0 {
                    state = SqlState::Code;
                }
            }
            (SqlState::BlockComment(depth), Some('/')) if c(i + 1) == Some('*') => {
                *depth += 1;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

const WHOLE_QUERY: &str =
    "is one template: its value would be sent as a bound parameter, not run as SQL";
const WHOLE_QUERY_FIX: &str = "if the value is trusted SQL (an operator's param), write `{{ params.query | safe }}`; else write the statement and put the values in it (`SELECT … WHERE id = {{ params.id }}`)";

const QUOTED_FIX: &str = "write the template outside the quotes: a bare `{{ x }}` is sent as a bound parameter (`WHERE name = {{ params.name }}`); a name goes through `{{ params.db | ident }}`, which quotes it as an identifier";

/// Interpolations of an SQL query inside quotes or comments: the byte offset of each one's
/// `{{`, what is wrong and the fix. `| ident` and `| safe` ones are raw text by request.
pub fn query_problems(text: &str) -> Vec<(usize, String, String)> {
    let parts = source_parts(text);
    if let [SourcePart::Expr { offset, .. }] = parts.as_slice()
        && !parts[0].filtered_by("safe")
        && !parts[0].filtered_by("ident")
    {
        return vec![(*offset, WHOLE_QUERY.to_owned(), WHOLE_QUERY_FIX.to_owned())];
    }
    let mut toks = Vec::new();
    let mut offsets = Vec::new();
    for p in parts {
        match &p {
            SourcePart::Text(t) => toks.extend(t.chars().map(Tok::Char)),
            SourcePart::Expr { .. } if p.filtered_by("safe") || p.filtered_by("ident") => {
                toks.push(Tok::Char('x'));
            }
            SourcePart::Expr { offset, .. } => {
                toks.push(Tok::Hole);
                offsets.push(*offset);
            }
        }
    }
    sql_places(&toks)
        .into_iter()
        .zip(offsets)
        .filter_map(|(place, at)| {
            place.map(|p| {
                (
                    at,
                    format!("puts a template value {p}"),
                    QUOTED_FIX.to_owned(),
                )
            })
        })
        .collect()
}

/// Render a query: every value outside quotes becomes `$n` (numbered after `first` written
/// parameters) and is returned with the others in order.
///
/// # Errors
/// When the template does not render, or a value sits inside quotes or a comment.
pub fn render_query(
    r: &Renderer<'_>,
    text: &str,
    first: usize,
) -> Result<(String, Vec<String>), RenderError> {
    let holes = r.holes(text)?;
    if let [Piece::Hole(_)] = holes.pieces() {
        return Err(RenderError::invalid(format!(
            "the query {WHOLE_QUERY}; {WHOLE_QUERY_FIX}"
        )));
    }
    let toks: Vec<Tok> = holes
        .pieces()
        .iter()
        .flat_map(|p| match p {
            Piece::Text(t) => t.chars().map(Tok::Char).collect::<Vec<_>>(),
            Piece::Hole(_) => vec![Tok::Hole],
        })
        .collect();
    if let Some((i, place)) = sql_places(&toks)
        .into_iter()
        .enumerate()
        .find_map(|(i, p)| p.map(|p| (i, p)))
    {
        return Err(RenderError::invalid(format!(
            "value {} of the query is {place}; {QUOTED_FIX}",
            i + 1
        )));
    }
    let query = holes.join(|i, v| {
        if v.placeholder {
            v.text.clone()
        } else {
            format!("${}", first + i + 1)
        }
    });
    let values = holes
        .values
        .iter()
        .filter(|v| !v.placeholder)
        .map(|v| v.text.clone())
        .collect();
    Ok((query, values))
}

/// SQL to run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    /// Connection string (usually `{{ secrets.pg_dsn }}`); masked in every output.
    pub dsn: Spanned<String>,
    /// The statement(s). Values belong in `params` (`$1`, `$2`…), never interpolated.
    pub query: Spanned<String>,
    /// Bind parameters (templates), passed as text.
    #[serde(default)]
    pub params: Vec<Spanned<String>>,
    /// Limit for the statement (default 30s).
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
    /// Run inside one transaction: a failure leaves nothing half-applied.
    #[serde(default)]
    pub transaction: bool,
    /// Whether the statement changes anything (default: guessed from its first keyword).
    #[serde(default)]
    pub mutates: Option<bool>,
}

/// Keywords of statements that only read.
const READ_ONLY: &[&str] = &["select", "show", "explain", "with", "values", "table"];

impl Kind for SqlSpec {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = vec![
            TemplateField::new("sql.dsn", &self.dsn, Escape::None),
            TemplateField::new("sql.query", &self.query, Escape::Sql),
        ];
        for (i, p) in self.params.iter().enumerate() {
            out.push(TemplateField::new(
                format!("sql.params[{i}]"),
                p,
                Escape::None,
            ));
        }
        out
    }

    fn mutates(&self) -> bool {
        self.mutates.unwrap_or_else(|| {
            let first = self
                .query
                .value
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            !READ_ONLY.contains(&first.as_str())
        })
    }

    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![(
            "sql".to_owned(),
            crate::mask::mask_dsn(&r.render(&self.dsn.value, Escape::None)?),
        )];
        let (query, bound) = render_query(r, &self.query.value, self.params.len())?;
        out.push(("query".to_owned(), query));
        for (i, p) in self.params.iter().enumerate() {
            out.push((format!("${}", i + 1), r.render(&p.value, Escape::None)?));
        }
        for (i, v) in bound.into_iter().enumerate() {
            out.push((format!("${}", self.params.len() + i + 1), v));
        }
        if self.transaction {
            out.push(("transaction".to_owned(), "yes".to_owned()));
        }
        Ok(out)
    }
}

/// Limit of one statement (connecting included) when the spec gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the cancel request sent to the server after a timeout or a cancellation may take.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

impl super::Perform for SqlSpec {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(client::perform(self, ctx))
    }
}

mod client {
    //! Connecting with tokio-postgres, running the statement(s), and turning rows into JSON.

    use std::fmt::Write as _;
    use std::time::Duration;

    use serde_json::{Map, Value};
    use tokio_postgres::config::SslMode;
    // The buffer type `ToSql::to_sql` names, by the path `to_sql_checked!` itself expands to
    // (the `bytes` crate is not a direct dependency).
    use tokio_postgres::types::private::BytesMut;
    use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
    use tokio_postgres::{AsyncMessage, Client, Config, NoTls, SimpleQueryMessage, Statement};

    use super::{CANCEL_GRACE, DEFAULT_TIMEOUT, SqlSpec};
    use crate::exec::{ActionCtx, ActionError, ActionResult, Stream};
    use crate::mask::{Masker, mask_dsn};
    use crate::template::Escape;

    /// A bind parameter sent in text format, whatever type the server inferred for it: the
    /// server parses it as it would parse a literal (`$1` compared with an integer column
    /// receives `'42'` and reads 42), as `psql`'s `\bind` and libpq's `PQexecParams` do.
    #[derive(Debug)]
    struct TextParam<'a>(&'a str);

    impl ToSql for TextParam<'_> {
        fn to_sql(
            &self,
            _ty: &Type,
            out: &mut BytesMut,
        ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            out.extend_from_slice(self.0.as_bytes());
            Ok(IsNull::No)
        }

        fn accepts(_ty: &Type) -> bool {
            true
        }

        fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
            tokio_postgres::types::Format::Text
        }

        tokio_postgres::types::to_sql_checked!();
    }

    /// A column value as the server sent it (binary format), decoded by [`super::decode`].
    struct Raw<'a>(Option<&'a [u8]>);

    impl<'a> FromSql<'a> for Raw<'a> {
        fn from_sql(
            _ty: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Self(Some(raw)))
        }

        fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Self(None))
        }

        fn accepts(_ty: &Type) -> bool {
            true
        }
    }

    /// Why a statement stopped before it finished.
    enum Stop {
        TimedOut,
        Cancelled,
    }

    /// What the statement(s) returned.
    struct Output {
        columns: Vec<String>,
        rows: Vec<Value>,
        affected: u64,
    }

    /// How the query is run, decided after preparing it and before anything executes.
    enum Plan {
        /// One statement, every column type readable: extended protocol, binary values.
        Typed(Statement),
        /// One statement without params, some column of a type read as text: simple protocol,
        /// values converted from text with the prepared column types.
        Text(Statement),
        /// Several statements (no params): simple protocol, values as text.
        Batch,
    }

    pub(super) async fn perform(
        spec: &SqlSpec,
        ctx: &ActionCtx,
    ) -> Result<ActionResult, ActionError> {
        let r = ctx.renderer();
        let render = |t: &str| {
            r.render(t, Escape::None)
                .map_err(|e| ActionError::Failed(e.to_string()))
        };
        let dsn = render(&spec.dsn.value)?;
        let (query, bound) = super::render_query(&r, &spec.query.value, spec.params.len())
            .map_err(|e| ActionError::Failed(ctx.mask(&e.to_string())))?;
        let mut params = spec
            .params
            .iter()
            .map(|p| render(&p.value))
            .collect::<Result<Vec<_>, _>>()?;
        params.extend(bound);
        let shown_dsn = ctx.mask(&mask_dsn(&dsn));
        // The statement's own limit, never beyond the attempt's (the step's or check's timeout).
        let timeout = match &spec.timeout {
            Some(t) => crate::duration::parse(&t.value.0).map_err(|e| {
                ActionError::Failed(format!("invalid sql.timeout `{}`: {e}", t.value.0))
            })?,
            None => DEFAULT_TIMEOUT,
        }
        .min(ctx.timeout());

        let config = connection_config(&dsn, &shown_dsn, timeout)
            .map_err(|e| ActionError::Failed(ctx.mask(&e)))?;
        // The password, in case anything echoes it outside the DSN.
        let password = Masker::new(
            config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        );
        let fail = |msg: String| ActionError::Failed(ctx.mask(&password.mask(&msg)));
        ctx.note_command(&command_line(&shown_dsn, &query, &params));

        let deadline = tokio::time::Instant::now() + timeout;
        let mut cancel = ctx.cancelled();
        let (client, connection) = tokio::select! {
            c = config.connect(NoTls) => {
                c.map_err(|e| fail(format!("failed to connect to {shown_dsn}: {}", describe(&e))))?
            }
            () = tokio::time::sleep_until(deadline) => {
                let limit = crate::duration::format(timeout);
                ctx.output(Stream::Stderr, &format!("no connection to {shown_dsn} within {limit}"));
                return Err(ActionError::TimedOut(timeout));
            }
            () = cancel.wait() => return Err(ActionError::Cancelled),
        };
        // The connection runs on its own task; notices (`NOTICE: … skipping`) become stderr.
        let notices_ctx = ctx.clone();
        let notices = tokio::spawn(async move {
            let mut connection = connection;
            while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match m {
                    Ok(AsyncMessage::Notice(n)) => notices_ctx.output(
                        Stream::Stderr,
                        &format!("{}: {}", n.severity(), n.message()),
                    ),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let token = client.cancel_token();

        let outcome = tokio::select! {
            r = run(&client, &query, &params, spec.transaction) => Ok(r),
            () = tokio::time::sleep_until(deadline) => Err(Stop::TimedOut),
            () = cancel.wait() => Err(Stop::Cancelled),
        };
        let outcome = match outcome {
            Ok(r) => r,
            Err(stop) => {
                // Dropping the connection does not stop a running statement: ask the server
                // to cancel it (an open transaction is rolled back when the connection closes).
                let sent = tokio::time::timeout(CANCEL_GRACE, token.cancel_query(NoTls)).await;
                let how = match sent {
                    Ok(Ok(())) => "cancelled on the server".to_owned(),
                    Ok(Err(e)) => format!(
                        "the cancel request failed ({}), the connection is closed",
                        describe(&e)
                    ),
                    Err(_) => {
                        "the cancel request got no answer, the connection is closed".to_owned()
                    }
                };
                drop(client);
                notices.abort();
                return Err(match stop {
                    Stop::TimedOut => {
                        ctx.output(
                            Stream::Stderr,
                            &format!(
                                "statement on {shown_dsn} still running after {}: {how}{}",
                                crate::duration::format(timeout),
                                if spec.transaction {
                                    "; the transaction is rolled back"
                                } else {
                                    ""
                                }
                            ),
                        );
                        ActionError::TimedOut(timeout)
                    }
                    Stop::Cancelled => ActionError::Cancelled,
                });
            }
        };
        drop(client);
        // Let the notices of the statement reach the log before the step ends.
        let _ = tokio::time::timeout(Duration::from_secs(1), notices).await;
        let out = outcome.map_err(|e| {
            fail(format!(
                "query failed on {shown_dsn}: {e}{}",
                if spec.transaction {
                    "; the transaction was rolled back, nothing was applied"
                } else {
                    ""
                }
            ))
        })?;

        let row_count = out.rows.len();
        let summary = if out.columns.is_empty() {
            format!("{} affected", out.affected)
        } else {
            format!("{row_count} row{}", if row_count == 1 { "" } else { "s" })
        };
        let rows = out.rows.into_iter().map(|v| mask_value(ctx, v)).collect();
        Ok(ActionResult {
            value: serde_json::json!({
                "rows": Value::Array(rows),
                "row_count": row_count,
                "affected": out.affected,
                "columns": out.columns,
            }),
            ok: true,
            summary,
            exit_code: None,
            http_status: None,
        })
    }

    /// The connection settings, refusing what this build cannot honour.
    fn connection_config(dsn: &str, shown: &str, timeout: Duration) -> Result<Config, String> {
        let tls = |mode: &str| {
            format!(
                "failed to connect to {shown}: sslmode={mode} asks for TLS, which the `sql` kind does not support yet (it never falls back to an unencrypted connection); use sslmode=disable on a trusted path (loopback, a port-forward, a tunnel), or run psql in a `run` step"
            )
        };
        let lower = dsn.to_ascii_lowercase();
        for mode in ["verify-ca", "verify-full"] {
            if lower.contains(&format!("sslmode={mode}")) {
                return Err(tls(mode));
            }
        }
        let mut config: Config = dsn
            .parse()
            .map_err(|e| format!("invalid DSN {shown}: {}", describe(&e)))?;
        if matches!(config.get_ssl_mode(), SslMode::Require) {
            return Err(tls("require"));
        }
        if config.get_application_name().is_none() {
            config.application_name("runbook");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        Ok(config)
    }

    /// The rendered action for the log and the audit entry: masked DSN, query, params.
    fn command_line(shown_dsn: &str, query: &str, params: &[String]) -> String {
        let mut out = format!("{shown_dsn}: {query}");
        if !params.is_empty() {
            out.push_str(" [");
            for (i, p) in params.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "${}='{}'", i + 1, p.replace('\'', "''"));
            }
            out.push(']');
        }
        out
    }

    /// A tokio-postgres error as an operator reads it: the server's severity, message and
    /// SQLSTATE (with detail, hint and position), else the chain of causes.
    pub(super) fn describe(e: &tokio_postgres::Error) -> String {
        if let Some(db) = e.as_db_error() {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(tokio_postgres::error::ErrorPosition::Original(p)) = db.position() {
                let _ = write!(s, " at character {p} of the query");
            }
            if let Some(d) = db.detail() {
                let _ = write!(s, "; detail: {d}");
            }
            if let Some(h) = db.hint() {
                let _ = write!(s, "; hint: {h}");
            }
            return s;
        }
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(cause) = src {
            let _ = write!(s, ": {cause}");
            src = cause.source();
        }
        s
    }

    /// Prepare, then execute exactly once (inside `BEGIN`/`COMMIT` when asked).
    async fn run(
        client: &Client,
        query: &str,
        params: &[String],
        transaction: bool,
    ) -> Result<Output, String> {
        let plan = plan(client, query, params).await?;
        if transaction {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| format!("failed to begin the transaction: {}", describe(&e)))?;
        }
        let out = match &plan {
            Plan::Typed(stmt) => typed(client, stmt, params).await,
            Plan::Text(stmt) => text(client, query, Some(stmt)).await,
            Plan::Batch => text(client, query, None).await,
        };
        match out {
            Ok(out) => {
                if transaction {
                    client
                        .batch_execute("COMMIT")
                        .await
                        .map_err(|e| format!("failed to commit: {}", describe(&e)))?;
                }
                Ok(out)
            }
            Err(e) => {
                if transaction {
                    // Closing the connection would roll back too; say so explicitly.
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                Err(e)
            }
        }
    }

    async fn plan(client: &Client, query: &str, params: &[String]) -> Result<Plan, String> {
        match client.prepare(query).await {
            Ok(stmt) => {
                if stmt.params().len() != params.len() {
                    return Err(format!(
                        "the query has {} bind parameter{} ($1…) but `params` gives {}",
                        stmt.params().len(),
                        if stmt.params().len() == 1 { "" } else { "s" },
                        params.len()
                    ));
                }
                let unreadable = stmt
                    .columns()
                    .iter()
                    .find(|c| !super::decode::readable(c.type_()));
                match unreadable {
                    None => Ok(Plan::Typed(stmt)),
                    Some(_) if params.is_empty() => Ok(Plan::Text(stmt)),
                    Some(c) => Err(format!(
                        "column `{}` has type `{}`, which the sql kind cannot read together with bind parameters; cast it in the query (`{}::text`)",
                        c.name(),
                        c.type_(),
                        c.name()
                    )),
                }
            }
            Err(e) if is_multi_statement(&e) => {
                if params.is_empty() {
                    Ok(Plan::Batch)
                } else {
                    Err(format!(
                        "bind parameters need a single statement, and the query has several: {}",
                        describe(&e)
                    ))
                }
            }
            Err(e) => Err(describe(&e)),
        }
    }

    fn is_multi_statement(e: &tokio_postgres::Error) -> bool {
        e.as_db_error().is_some_and(|db| {
            db.code() == &tokio_postgres::error::SqlState::SYNTAX_ERROR
                && db.message().contains("multiple commands")
        })
    }

    async fn typed(client: &Client, stmt: &Statement, params: &[String]) -> Result<Output, String> {
        let args: Vec<TextParam<'_>> = params.iter().map(|p| TextParam(p)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
        if columns.is_empty() {
            let affected = client
                .execute(stmt, &refs)
                .await
                .map_err(|e| describe(&e))?;
            return Ok(Output {
                columns,
                rows: Vec::new(),
                affected,
            });
        }
        let rows = client.query(stmt, &refs).await.map_err(|e| describe(&e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut map = Map::new();
            for (i, col) in stmt.columns().iter().enumerate() {
                let raw: Raw<'_> = row
                    .try_get(i)
                    .map_err(|e| format!("failed to read column `{}`: {e}", col.name()))?;
                let v = match raw.0 {
                    None => Value::Null,
                    Some(bytes) => super::decode::value(col.type_(), bytes).map_err(|e| {
                        format!(
                            "failed to read column `{}` of type `{}`: {e}",
                            col.name(),
                            col.type_()
                        )
                    })?,
                };
                map.insert(col.name().to_owned(), v);
            }
            out.push(Value::Object(map));
        }
        Ok(Output {
            columns,
            affected: rows.len() as u64,
            rows: out,
        })
    }

    /// The simple protocol: every value arrives as text; with the prepared statement's column
    /// types, numbers, booleans and JSON are converted back.
    async fn text(
        client: &Client,
        query: &str,
        stmt: Option<&Statement>,
    ) -> Result<Output, String> {
        let messages = client.simple_query(query).await.map_err(|e| describe(&e))?;
        let mut columns: Vec<String> = Vec::new();
        let mut rows = Vec::new();
        let mut affected = 0;
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = cols.iter().map(|c| c.name().to_owned()).collect();
                }
                SimpleQueryMessage::Row(row) => {
                    let mut map = Map::new();
                    for (i, col) in row.columns().iter().enumerate() {
                        let v = match row.get(i) {
                            None => Value::Null,
                            Some(s) => match stmt.and_then(|st| st.columns().get(i)) {
                                Some(c) => super::decode::from_text(c.type_(), s),
                                None => Value::String(s.to_owned()),
                            },
                        };
                        map.insert(col.name().to_owned(), v);
                    }
                    rows.push(Value::Object(map));
                }
                SimpleQueryMessage::CommandComplete(n) => affected += n,
                _ => {}
            }
        }
        Ok(Output {
            columns,
            rows,
            affected,
        })
    }

    fn mask_value(ctx: &ActionCtx, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(ctx.mask(&s)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| mask_value(ctx, v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, mask_value(ctx, v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

mod decode {
    //! `PostgreSQL` binary values to JSON: numbers, booleans, strings; `numeric` as a string
    //! (exact), date/time as ISO 8601 / RFC 3339, arrays as JSON arrays.

    use std::fmt::Write as _;

    use serde_json::Value;
    use tokio_postgres::types::{FromSql, Kind, Type};

    /// Whether [`value`] can read a column of this type.
    pub(super) fn readable(ty: &Type) -> bool {
        match *ty {
            Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::OID
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::NUMERIC
            | Type::CHAR
            | Type::JSON
            | Type::JSONB
            | Type::XML
            | Type::TIMESTAMP
            | Type::TIMESTAMPTZ
            | Type::DATE
            | Type::TIME
            | Type::TIMETZ
            | Type::INTERVAL
            | Type::UUID
            | Type::BYTEA
            | Type::INET
            | Type::CIDR => true,
            ref t if <&str as FromSql>::accepts(t) => true,
            _ => match ty.kind() {
                Kind::Enum(_) => true,
                Kind::Domain(base) => readable(base),
                Kind::Array(member) => readable(member),
                _ => false,
            },
        }
    }

    /// A big-endian reader over a binary value.
    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("truncated value".to_owned());
            }
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            Ok(head)
        }
        fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
            self.take(N)?
                .try_into()
                .map_err(|_| "truncated value".to_owned())
        }
        fn i16(&mut self) -> Result<i16, String> {
            Ok(i16::from_be_bytes(self.array()?))
        }
        fn u16(&mut self) -> Result<u16, String> {
            Ok(u16::from_be_bytes(self.array()?))
        }
        fn i32(&mut self) -> Result<i32, String> {
            Ok(i32::from_be_bytes(self.array()?))
        }
        fn i64(&mut self) -> Result<i64, String> {
            Ok(i64::from_be_bytes(self.array()?))
        }
        fn u8(&mut self) -> Result<u8, String> {
            Ok(self.array::<1>()?[0])
        }
    }

    fn utf8(raw: &[u8]) -> Result<String, String> {
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|e| e.to_string())
    }

    fn float(f: f64) -> Value {
        serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
    }

    fn json_text(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }

    /// One non-null value of a readable type.
    pub(super) fn value(ty: &Type, raw: &[u8]) -> Result<Value, String> {
        let mut r = Reader(raw);
        Ok(match *ty {
            Type::BOOL => Value::Bool(r.u8()? != 0),
            Type::INT2 => Value::from(r.i16()?),
            Type::INT4 => Value::from(r.i32()?),
            Type::INT8 => Value::from(r.i64()?),
            Type::OID => Value::from(u32::from_be_bytes(r.array()?)),
            Type::FLOAT4 => float(f64::from(f32::from_be_bytes(r.array()?))),
            Type::FLOAT8 => float(f64::from_be_bytes(r.array()?)),
            Type::NUMERIC => Value::String(numeric(&mut r)?),
            Type::CHAR => Value::String(char::from(r.u8()?).to_string()),
            Type::JSON => json_text(&utf8(raw)?),
            Type::JSONB => match raw.split_first() {
                Some((1, rest)) => json_text(&utf8(rest)?),
                _ => return Err("unknown jsonb version".to_owned()),
            },
            Type::XML => Value::String(utf8(raw)?),
            Type::TIMESTAMP => Value::String(timestamp(r.i64()?, false)),
            Type::TIMESTAMPTZ => Value::String(timestamp(r.i64()?, true)),
            Type::DATE => Value::String(date(r.i32()?)),
            Type::TIME => Value::String(time(r.i64()?)),
            Type::TIMETZ => {
                let t = r.i64()?;
                // Seconds west of UTC.
                let zone = r.i32()?;
                Value::String(format!("{}{}", time(t), offset(-i64::from(zone))))
            }
            Type::INTERVAL => {
                let micros = r.i64()?;
                let days = r.i32()?;
                let months = r.i32()?;
                Value::String(interval(micros, days, months))
            }
            Type::UUID => {
                let b: [u8; 16] = r.array()?;
                let hex: String = b.iter().fold(String::new(), |mut s, x| {
                    let _ = write!(s, "{x:02x}");
                    s
                });
                Value::String(format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                ))
            }
            Type::BYTEA => Value::String(raw.iter().fold("\\x".to_owned(), |mut s, x| {
                let _ = write!(s, "{x:02x}");
                s
            })),
            Type::INET | Type::CIDR => Value::String(inet(&mut r)?),
            ref t if <&str as FromSql>::accepts(t) => Value::String(
                <&str as FromSql>::from_sql(t, raw)
                    .map_err(|e| e.to_string())?
                    .to_owned(),
            ),
            _ => match ty.kind() {
                Kind::Enum(_) => Value::String(utf8(raw)?),
                Kind::Domain(base) => value(base, raw)?,
                Kind::Array(member) => array(member, &mut r)?,
                _ => return Err(format!("values of type `{ty}` cannot be read")),
            },
        })
    }

    /// A value of the simple protocol (text), typed when the column type says how.
    pub(super) fn from_text(ty: &Type, text: &str) -> Value {
        match *ty {
            Type::BOOL => Value::Bool(text == "t"),
            Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => text
                .parse::<i64>()
                .map_or_else(|_| Value::String(text.to_owned()), Value::from),
            Type::FLOAT4 | Type::FLOAT8 => text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Value::String(text.to_owned()), Value::Number),
            Type::JSON | Type::JSONB => json_text(text),
            _ => match ty.kind() {
                Kind::Domain(base) => from_text(base, text),
                _ => Value::String(text.to_owned()),
            },
        }
    }

    fn array(member: &Type, r: &mut Reader<'_>) -> Result<Value, String> {
        let ndim = r.i32()?;
        let _has_nulls = r.i32()?;
        let _element_oid = r.i32()?;
        let mut dims = Vec::new();
        for _ in 0..ndim {
            let len = usize::try_from(r.i32()?).map_err(|_| "negative array length")?;
            let _lower_bound = r.i32()?;
            dims.push(len);
        }
        if dims.is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        let total: usize = dims.iter().product();
        let mut items = Vec::with_capacity(total.min(1 << 16));
        for _ in 0..total {
            let len = r.i32()?;
            items.push(match usize::try_from(len) {
                Ok(n) => value(member, r.take(n)?)?,
                Err(_) => Value::Null,
            });
        }
        Ok(nest(&dims, &mut items.into_iter()))
    }

    fn nest(dims: &[usize], items: &mut impl Iterator<Item = Value>) -> Value {
        match dims {
            [] => Value::Null,
            [n] => Value::Array(items.by_ref().take(*n).collect()),
            [n, rest @ ..] => Value::Array((0..*n).map(|_| nest(rest, items)).collect()),
        }
    }

    /// `numeric` exactly, as `PostgreSQL` prints it (base-10000 digits, display scale).
    fn numeric(r: &mut Reader<'_>) -> Result<String, String> {
        let ndigits = r.i16()?;
        let weight = r.i16()?;
        let sign = r.u16()?;
        let dscale = usize::from(r.u16()?);
        match sign {
            0x0000 | 0x4000 => {}
            0xC000 => return Ok("NaN".to_owned()),
            0xD000 => return Ok("Infinity".to_owned()),
            0xF000 => return Ok("-Infinity".to_owned()),
            _ => return Err("invalid numeric sign".to_owned()),
        }
        let mut digits = Vec::new();
        for _ in 0..ndigits {
            digits.push(r.i16()?);
        }
        let digit = |i: i32| {
            usize::try_from(i)
                .ok()
                .and_then(|i| digits.get(i))
                .copied()
                .unwrap_or(0)
        };
        let mut out = String::new();
        if sign == 0x4000 {
            out.push('-');
        }
        if weight < 0 {
            out.push('0');
        } else {
            for i in 0..=i32::from(weight) {
                if i == 0 {
                    let _ = write!(out, "{}", digit(i));
                } else {
                    let _ = write!(out, "{:04}", digit(i));
                }
            }
        }
        if dscale > 0 {
            let mut frac = String::new();
            let mut i = i32::from(weight) + 1;
            while frac.len() < dscale {
                let _ = write!(frac, "{:04}", digit(i));
                i += 1;
            }
            frac.truncate(dscale);
            out.push('.');
            out.push_str(&frac);
        }
        Ok(out)
    }

    /// Seconds between 1970-01-01 and `PostgreSQL`'s epoch, 2000-01-01.
    const PG_EPOCH_SECS: i64 = 946_684_800;
    const MICROS: i64 = 1_000_000;

    fn timestamp(micros: i64, utc: bool) -> String {
        match micros {
            i64::MAX => return "infinity".to_owned(),
            i64::MIN => return "-infinity".to_owned(),
            _ => {}
        }
        let secs = micros.div_euclid(MICROS) + PG_EPOCH_SECS;
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400) * MICROS + micros.rem_euclid(MICROS);
        format!(
            "{}T{}{}",
            civil(days),
            time(of_day),
            if utc { "Z" } else { "" }
        )
    }

    fn date(days: i32) -> String {
        match days {
            i32::MAX => "infinity".to_owned(),
            i32::MIN => "-infinity".to_owned(),
            d => civil(i64::from(d) + PG_EPOCH_SECS / 86_400),
        }
    }

    /// `HH:MM:SS` and the fraction, without trailing zeros.
    fn time(micros: i64) -> String {
        let s = micros.div_euclid(MICROS);
        format!(
            "{:02}:{:02}:{:02}{}",
            s / 3600,
            s % 3600 / 60,
            s % 60,
            fraction(micros.rem_euclid(MICROS))
        )
    }

    fn fraction(micros: i64) -> String {
        if micros == 0 {
            String::new()
        } else {
            format!(".{micros:06}").trim_end_matches('0').to_owned()
        }
    }

    fn offset(east_secs: i64) -> String {
        if east_secs == 0 {
            return "Z".to_owned();
        }
        let sign = if east_secs < 0 { '-' } else { '+' };
        let a = east_secs.abs();
        let mut s = format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60);
        if a % 60 != 0 {
            let _ = write!(s, ":{:02}", a % 60);
        }
        s
    }

    /// ISO 8601 duration, each field with its own sign (`PostgreSQL`'s `iso_8601` style).
    fn interval(micros: i64, days: i32, months: i32) -> String {
        if micros == 0 && days == 0 && months == 0 {
            return "PT0S".to_owned();
        }
        let mut out = "P".to_owned();
        let (years, months) = (months / 12, months % 12);
        for (n, unit) in [(years, 'Y'), (months, 'M'), (days, 'D')] {
            if n != 0 {
                let _ = write!(out, "{n}{unit}");
            }
        }
        if micros != 0 {
            out.push('T');
            let sign = if micros < 0 { "-" } else { "" };
            let abs = micros.unsigned_abs();
            let hours = abs / 3_600_000_000;
            let minutes = abs / 60_000_000 % 60;
            let seconds = abs / 1_000_000 % 60;
            let sub = i64::try_from(abs % 1_000_000).unwrap_or(0);
            if hours != 0 {
                let _ = write!(out, "{sign}{hours}H");
            }
            if minutes != 0 {
                let _ = write!(out, "{sign}{minutes}M");
            }
            if seconds != 0 || sub != 0 {
                let _ = write!(out, "{sign}{seconds}{}S", fraction(sub));
            }
        }
        out
    }

    fn inet(r: &mut Reader<'_>) -> Result<String, String> {
        let family = r.u8()?;
        let bits = r.u8()?;
        let is_cidr = r.u8()? != 0;
        let len = usize::from(r.u8()?);
        let addr = r.take(len)?;
        let (ip, max): (std::net::IpAddr, u8) = match (family, addr.len()) {
            (2, 4) => (
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(addr).map_err(|e| e.to_string())?)
                    .into(),
                32,
            ),
            (3, 16) => (
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr).map_err(|e| e.to_string())?)
                    .into(),
                128,
            ),
            _ => return Err("invalid inet value".to_owned()),
        };
        Ok(if is_cidr || bits != max {
            format!("{ip}/{bits}")
        } else {
            ip.to_string()
        })
    }

    /// `YYYY-MM-DD` of days since 1970-01-01 (proleptic Gregorian; Howard Hinnant's algorithm).
    fn civil(z: i64) -> String {
        let (y, m, d) = crate::clock::civil_from_days(z);
        if y < 0 {
            format!("-{:04}-{m:02}-{d:02}", -y)
        } else {
            format!("{y:04}-{m:02}-{d:02}")
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn num(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> String {
            let mut b = Vec::new();
            for v in [ndigits, weight] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            for v in [sign, dscale] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            for d in digits {
                b.extend_from_slice(&d.to_be_bytes());
            }
            numeric(&mut Reader(&b)).unwrap()
        }

        #[test]
        fn numerics_print_exactly() {
            // 12345.678 = 1|2345.6780, scale 3
            assert_eq!(num(3, 1, 0, 3, &[1, 2345, 6780]), "12345.678");
            assert_eq!(num(1, -2, 0, 5, &[1000]), "0.00001");
            assert_eq!(num(1, 0, 0x4000, 2, &[7]), "-7.00");
            assert_eq!(num(1, 1, 0, 0, &[2]), "20000");
            assert_eq!(num(0, 0, 0, 0, &[]), "0");
            assert_eq!(num(0, 0, 0xC000, 0, &[]), "NaN");
        }

        #[test]
        fn timestamps_are_rfc3339() {
            assert_eq!(timestamp(0, true), "2000-01-01T00:00:00Z");
            assert_eq!(timestamp(-1, false), "1999-12-31T23:59:59.999999");
            assert_eq!(
                timestamp(815_918_645_123_000, true),
                "2025-11-08T12:04:05.123Z"
            );
            assert_eq!(timestamp(i64::MAX, true), "infinity");
            assert_eq!(date(-1), "1999-12-31");
            assert_eq!(offset(-5 * 3600 - 1800), "-05:30");
        }

        #[test]
        fn intervals_are_iso8601() {
            assert_eq!(interval(0, 0, 0), "PT0S");
            assert_eq!(interval(3_723_500_000, 2, 14), "P1Y2M2DT1H2M3.5S");
            assert_eq!(interval(-60_000_000, 0, 0), "PT-1M");
        }
    }
}
