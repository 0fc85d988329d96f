//! `run`: a shell command, the universal action and check.

use std::collections::BTreeMap;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::Spanned;
use crate::template::{Escape, RenderError, Renderer};

/// A shell command with its environment, as written on a step, check or compensation.
#[derive(Debug, Clone, Copy)]
pub struct RunAction<'a> {
    /// The command line, run by `/bin/sh -c`.
    pub command: &'a Spanned<String>,
    /// Extra environment variables.
    pub env: &'a BTreeMap<String, Spanned<String>>,
    /// Working directory.
    pub cwd: Option<&'a Spanned<String>>,
    /// Standard input.
    pub stdin: Option<&'a Spanned<String>>,
}

impl Kind for RunAction<'_> {
    fn name(&self) -> &'static str {
        "run"
    }

    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = vec![TemplateField::new("run", self.command, Escape::Shell)];
        for (k, v) in self.env {
            out.push(TemplateField::new(format!("env.{k}"), v, Escape::None));
        }
        if let Some(cwd) = self.cwd {
            out.push(TemplateField::new("cwd", cwd, Escape::None));
        }
        if let Some(stdin) = self.stdin {
            out.push(TemplateField::new("stdin", stdin, Escape::None));
        }
        out
    }

    fn mutates(&self) -> bool {
        // A shell command can do anything; authors mark read-only ones with `mutates: false`.
        true
    }

    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![(
            "run".to_owned(),
            r.render(&self.command.value, Escape::Shell)?,
        )];
        for (k, v) in self.env {
            out.push((format!("env {k}"), r.render(&v.value, Escape::None)?));
        }
        if let Some(cwd) = self.cwd {
            out.push(("cwd".to_owned(), r.render(&cwd.value, Escape::None)?));
        }
        if let Some(stdin) = self.stdin {
            out.push(("stdin".to_owned(), r.render(&stdin.value, Escape::None)?));
        }
        Ok(out)
    }
}
