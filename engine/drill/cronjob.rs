//! `runbook drill cronjob`: a Kubernetes `ConfigMap` holding the drill file and every runbook it
//! uses (at their relative paths), and a `batch/v1` `CronJob` that runs the drill on its schedule
//! with the state directory on a volume.

use std::path::{Component, Path, PathBuf};

use super::compose::LoadedDrill;

/// Why no manifest could be made.
#[derive(Debug, thiserror::Error)]
pub enum CronjobError {
    /// The drill has no `schedule`.
    #[error("failed to make a CronJob: the drill has no `schedule`")]
    NoSchedule,
    /// A runbook the drill uses does not compile.
    #[error("failed to collect the drill's runbooks: {0}")]
    Runbook(String),
    /// A file is outside the current directory, so it has no relative path to mount at.
    #[error("failed to place {} in the ConfigMap: it is outside the current directory (run `runbook drill cronjob` from a directory that holds the drill file and its runbooks, e.g. the repository root, with relative paths)", .0.display())]
    OutsideDir(PathBuf),
    /// A file could not be read.
    #[error("failed to read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where the drill and runbooks are mounted, and the state volume.
#[derive(Debug, Clone)]
pub struct CronjobOptions<'a> {
    /// The image with `runbook` and the tools the runbooks call.
    pub image: &'a str,
    /// The namespace of both objects.
    pub namespace: &'a str,
    /// The `PersistentVolumeClaim` holding the state directory.
    pub state_claim: &'a str,
}

/// A lexically normalised relative path (no `.`/`..`), or `None` when it leaves the base.
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(x) => out.push(x),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The drill file and every runbook it (transitively, through `call`) uses.
fn files_of(loaded: &LoadedDrill) -> Result<Vec<PathBuf>, CronjobError> {
    let mut files = vec![loaded.path.clone()];
    let mut todo: Vec<PathBuf> = loaded
        .drill
        .scenarios
        .iter()
        .map(|s| crate::exec::resolve_relative(&loaded.path, &s.value.runbook.value))
        .collect();
    while let Some(p) = todo.pop() {
        let key = normalise(&p);
        if files.iter().any(|f| normalise(f) == key) {
            continue;
        }
        let c = crate::compile::compile_path(&p).map_err(|(f, d)| {
            CronjobError::Runbook(
                d.first()
                    .map_or_else(|| p.display().to_string(), |d| d.short(&f)),
            )
        })?;
        for i in 0..c.steps.len() {
            if let Some(call) = &c.step(i).call {
                todo.push(crate::exec::resolve_relative(&p, &call.value.runbook.value));
            }
        }
        files.push(p);
    }
    Ok(files)
}

fn dns_name(s: &str) -> String {
    let mut n: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    n = n.trim_matches('-').to_owned();
    n.truncate(40);
    n.trim_end_matches('-').to_owned()
}

/// The two manifests, as one multi-document YAML text.
///
/// # Errors
/// No schedule, a runbook that does not compile, a file outside the current directory or
/// unreadable.
pub fn manifest(loaded: &LoadedDrill, o: &CronjobOptions<'_>) -> Result<String, CronjobError> {
    // One CronJob per distinct schedule, running the scenarios on it (all of them when the
    // drill has one schedule); scenarios without any schedule are not scheduled.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for s in &loaded.drill.scenarios {
        let Some(when) = super::compose::schedule_of(&loaded.drill, &s.value) else {
            continue;
        };
        let name = s.value.name.value.clone();
        match groups.iter_mut().find(|(w, _)| *w == when.value) {
            Some((_, names)) => names.push(name),
            None => groups.push((when.value.clone(), vec![name])),
        }
    }
    if groups.is_empty() {
        return Err(CronjobError::NoSchedule);
    }
    let files = files_of(loaded)?;
    let mut items = Vec::new();
    for f in &files {
        let rel = normalise(f)
            .filter(|r| !r.as_os_str().is_empty())
            .ok_or_else(|| CronjobError::OutsideDir(f.clone()))?;
        let text = std::fs::read_to_string(f).map_err(|source| CronjobError::Read {
            path: f.clone(),
            source,
        })?;
        let key: String = rel
            .display()
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        items.push((key, rel.display().to_string(), text));
    }
    let base = format!("runbook-drill-{}", dns_name(&loaded.drill.drill.value));
    let every = groups.len() == 1 && groups[0].1.len() == loaded.drill.scenarios.len();
    let mut y = String::new();
    y.push_str(
        "# Generated by `runbook drill cronjob`: the drill file and its runbooks, and a CronJob\n",
    );
    y.push_str(
        "# per schedule that runs the drill with the state (history, audit log) on a volume.\n",
    );
    config_map(&mut y, &base, o, &items);
    for (when, names) in &groups {
        let (name, scenarios): (String, &[String]) = if every {
            (base.clone(), &[])
        } else {
            (format!("{base}-{}", dns_name(&names[0])), names)
        };
        y.push_str("---\n");
        cron_job(&mut y, &name, &base, when, scenarios, o, &items);
    }
    Ok(y)
}

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

const LABELS: &str =
    "  labels: {app.kubernetes.io/name: runbook-drill, app.kubernetes.io/managed-by: runbook}";

/// The `ConfigMap`: every file, keyed by its relative path.
fn config_map(
    y: &mut String,
    name: &str,
    o: &CronjobOptions<'_>,
    items: &[(String, String, String)],
) {
    let mut line = |s: &str| {
        y.push_str(s);
        y.push('\n');
    };
    line("apiVersion: v1");
    line("kind: ConfigMap");
    line("metadata:");
    line(&format!("  name: {}", q(name)));
    line(&format!("  namespace: {}", q(o.namespace)));
    line(LABELS);
    line("data:");
    for (key, _, text) in items {
        line(&format!("  {}: {}", q(key), q(text)));
    }
}

/// One `CronJob`: `runbook drill run` of the drill file (restricted to `scenarios` unless empty).
fn cron_job(
    y: &mut String,
    name: &str,
    config_map: &str,
    schedule: &str,
    scenarios: &[String],
    o: &CronjobOptions<'_>,
    items: &[(String, String, String)],
) {
    let mut line = |s: &str| {
        y.push_str(s);
        y.push('\n');
    };
    let drill_path = items.first().map(|i| i.1.clone()).unwrap_or_default();
    line("apiVersion: batch/v1");
    line("kind: CronJob");
    line("metadata:");
    line(&format!("  name: {}", q(name)));
    line(&format!("  namespace: {}", q(o.namespace)));
    line(LABELS);
    line("spec:");
    line(&format!("  schedule: {}", q(schedule)));
    line("  timeZone: Etc/UTC");
    line("  concurrencyPolicy: Forbid");
    line("  startingDeadlineSeconds: 3600");
    line("  successfulJobsHistoryLimit: 3");
    line("  failedJobsHistoryLimit: 5");
    line("  jobTemplate:");
    line("    spec:");
    line("      backoffLimit: 0");
    line("      template:");
    line("        metadata:");
    line("          labels: {app.kubernetes.io/name: runbook-drill}");
    line("        spec:");
    line("          restartPolicy: Never");
    line("          containers:");
    line("            - name: drill");
    line(&format!("              image: {}", q(o.image)));
    line("              workingDir: /drill");
    line("              args:");
    let mut args: Vec<&str> = vec!["drill", "run", &drill_path];
    for s in scenarios {
        args.extend(["--scenario", s]);
    }
    args.extend([
        "--state-dir",
        "/var/lib/runbook",
        "--report-dir",
        "/var/lib/runbook/reports",
        "--output",
        "plain",
    ]);
    for a in args {
        line(&format!("                - {}", q(a)));
    }
    line("              volumeMounts:");
    line("                - {name: drill, mountPath: /drill, readOnly: true}");
    line("                - {name: state, mountPath: /var/lib/runbook}");
    line("          volumes:");
    line("            - name: drill");
    line("              configMap:");
    line(&format!("                name: {}", q(config_map)));
    line("                items:");
    for (key, rel, _) in items {
        line(&format!(
            "                  - {{key: {}, path: {}}}",
            q(key),
            q(rel)
        ));
    }
    line("            - name: state");
    line(&format!(
        "              persistentVolumeClaim: {{claimName: {}}}",
        q(o.state_claim)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_inside_the_current_directory_only() {
        assert_eq!(
            normalise(Path::new("./drills/../runbooks/a.yaml")),
            Some(PathBuf::from("runbooks/a.yaml"))
        );
        assert_eq!(normalise(Path::new("../elsewhere.yaml")), None);
        assert_eq!(normalise(Path::new("/etc/drill.yaml")), None);
    }

    #[test]
    fn a_drill_without_schedule_has_no_cronjob() {
        let loaded = super::super::compose::from_source(
            crate::diagnostic::SourceFile::new(
                "d.yaml",
                "drill: d\nscenarios: [{name: a, runbook: r.yaml}]\n",
            ),
            Path::new("d.yaml"),
        )
        .map_err(|(_, d)| d)
        .unwrap();
        let o = CronjobOptions {
            image: "i",
            namespace: "n",
            state_claim: "s",
        };
        assert!(matches!(
            manifest(&loaded, &o),
            Err(CronjobError::NoSchedule)
        ));
    }
}
