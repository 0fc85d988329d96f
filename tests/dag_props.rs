//! Properties of the step DAG, on random runbooks: any acyclic `needs` compiles, and its order and
//! levels respect every edge; one back edge makes a cycle, reported with a path of real edges.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::path::Path;

use proptest::prelude::*;
use runbook::compile::{Compiled, compile};
use runbook::diagnostic::{Diagnostic, SourceFile};

/// A random DAG: `needs[i]` only names steps generated before `i`. The file lists the steps in
/// `file_order`, so that file order is not a topological order in general.
#[derive(Debug, Clone)]
struct Dag {
    needs: Vec<BTreeSet<usize>>,
    file_order: Vec<usize>,
}

impl Dag {
    fn len(&self) -> usize {
        self.needs.len()
    }
}

/// The id of generated step `i`. Some ids contain `-`, which `needs` may also write as `_`.
fn id(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("step-{i}")
    } else {
        format!("s{i}")
    }
}

/// How step `from` writes its need of `to`.
fn written_need(from: usize, to: usize) -> String {
    if (from + to).is_multiple_of(3) {
        id(to).replace('-', "_")
    } else {
        id(to)
    }
}

/// The runbook as YAML text, steps in file order, one `needs:` list per step.
fn render(dag: &Dag) -> String {
    let mut out = String::from("runbook: random-dag\nsteps:\n");
    for &i in &dag.file_order {
        let _ = writeln!(out, "  - id: {}", id(i));
        if !dag.needs[i].is_empty() {
            let needs: Vec<String> = dag.needs[i].iter().map(|&j| written_need(i, j)).collect();
            let _ = writeln!(out, "    needs: [{}]", needs.join(", "));
        }
        out.push_str("    run: \"true\"\n");
    }
    out
}

fn compile_text(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    compile(
        SourceFile::new("random-dag.yaml", text),
        Path::new("random-dag.yaml"),
    )
}

fn dag() -> impl Strategy<Value = Dag> {
    (1usize..=60).prop_flat_map(|n| {
        let needs: Vec<_> = (0..n)
            .map(|i| {
                proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(4))
                    .prop_map(|v| v.into_iter().collect::<BTreeSet<usize>>())
            })
            .collect();
        let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
        (needs, order).prop_map(|(needs, file_order)| Dag { needs, file_order })
    })
}

/// A DAG plus two steps `a <= b` to close a cycle with: `a` will need `b`, after making sure `b`
/// (transitively) needs `a`. `a == b` is a step needing itself.
fn dag_and_back_edge() -> impl Strategy<Value = (Dag, usize, usize)> {
    dag().prop_flat_map(|d| {
        let n = d.len();
        (Just(d), 0..n, 0..n).prop_map(|(d, x, y)| (d, x.min(y), x.max(y)))
    })
}

/// Whether `from` needs `to`, directly or through other steps.
fn reaches(needs: &[BTreeSet<usize>], from: usize, to: usize) -> bool {
    let mut stack = vec![from];
    let mut seen = vec![false; needs.len()];
    while let Some(i) = stack.pop() {
        for &j in &needs[i] {
            if j == to {
                return true;
            }
            if !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        }
    }
    false
}

/// Generated step index → compiled step index.
fn compiled_index(c: &Compiled, n: usize) -> Vec<usize> {
    let by_id: HashMap<&str, usize> = c.steps.iter().map(|s| (s.id.as_str(), s.index)).collect();
    (0..n).map(|i| by_id[id(i).as_str()]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn acyclic_runbooks_compile_and_respect_every_edge(d in dag()) {
        let n = d.len();
        let text = render(&d);
        let c = match compile_text(&text) {
            Ok(c) => c,
            Err(diags) => {
                let file = SourceFile::new("random-dag.yaml", text.as_str());
                let shown: Vec<String> = diags.iter().map(|x| x.short(&file)).collect();
                return Err(TestCaseError::fail(format!("did not compile:\n{}\n{text}", shown.join("\n"))));
            }
        };
        prop_assert_eq!(c.steps.len(), n);
        prop_assert_eq!(c.main_count, n);
        let at = compiled_index(&c, n);

        // `order` is a permutation of the steps…
        let mut sorted = c.order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        let mut position = vec![0; n];
        for (p, &i) in c.order.iter().enumerate() {
            position[i] = p;
        }
        // …every level lists each step once…
        let mut level = vec![usize::MAX; n];
        for (l, steps) in c.levels.iter().enumerate() {
            prop_assert!(!steps.is_empty(), "level {} is empty", l);
            for &i in steps {
                prop_assert_eq!(level[i], usize::MAX, "step {} on two levels", i);
                level[i] = l;
            }
        }
        prop_assert!(level.iter().all(|&l| l != usize::MAX), "a step is on no level");

        for i in 0..n {
            let me = at[i];
            let needs: BTreeSet<usize> = d.needs[i].iter().map(|&j| at[j]).collect();
            let compiled_needs: BTreeSet<usize> = c.steps[me].needs.iter().copied().collect();
            prop_assert_eq!(&compiled_needs, &needs, "needs of {}", id(i));
            for &need in &needs {
                // …a step comes after what it needs, on a deeper level…
                prop_assert!(position[need] < position[me], "{} ordered before its need", id(i));
                prop_assert!(level[need] < level[me], "{} not deeper than its need", id(i));
            }
            // …exactly one deeper than its deepest need.
            let expected = needs.iter().map(|&j| level[j] + 1).max().unwrap_or(0);
            prop_assert_eq!(level[me], expected, "level of {}", id(i));
        }
    }

    #[test]
    fn a_back_edge_is_reported_as_a_cycle_of_real_edges((d, a, b) in dag_and_back_edge()) {
        let mut d = d;
        if a != b && !reaches(&d.needs, b, a) {
            d.needs[b].insert(a);
        }
        d.needs[a].insert(b);
        let text = render(&d);
        let Err(diags) = compile_text(&text) else {
            return Err(TestCaseError::fail(format!("a cycle compiled:\n{text}")));
        };
        let codes: Vec<&str> = diags.iter().map(|x| x.code).collect();
        prop_assert_eq!(codes, vec!["cycle"], "one back edge makes exactly one cycle:\n{}", text);

        let by_id: HashMap<String, usize> = (0..d.len()).map(|i| (id(i), i)).collect();
        let diag = &diags[0];
        let path = diag
            .message
            .strip_prefix("dependency cycle: ")
            .ok_or_else(|| TestCaseError::fail(format!("unexpected message {:?}", diag.message)))?;
        let names: Vec<&str> = path.split(" → ").collect();
        prop_assert!(names.len() >= 2, "no path in {:?}", diag.message);
        prop_assert_eq!(names.first(), names.last(), "the path is not closed: {:?}", diag.message);
        let steps: Vec<usize> = names
            .iter()
            .map(|name| by_id.get(*name).copied().ok_or_else(|| TestCaseError::fail(format!("`{name}` is not a step"))))
            .collect::<Result<_, _>>()?;
        // A simple cycle: no step twice (apart from closing it).
        let distinct: BTreeSet<usize> = steps[1..].iter().copied().collect();
        prop_assert_eq!(distinct.len(), steps.len() - 1, "not a simple cycle: {:?}", diag.message);
        for pair in steps.windows(2) {
            prop_assert!(
                d.needs[pair[0]].contains(&pair[1]),
                "`{}` does not need `{}`, yet {:?}",
                id(pair[0]),
                id(pair[1]),
                diag.message
            );
        }
        // The diagnostic points at the first `needs` entry of the path, as written.
        let span = diag.span.ok_or_else(|| TestCaseError::fail("a cycle without a position"))?;
        let offset = span.offset.ok_or_else(|| TestCaseError::fail("a cycle without an offset"))?;
        let written = written_need(steps[0], steps[1]);
        prop_assert!(
            text[offset..].starts_with(&written),
            "the cycle points at {:?}, not at the need `{}`",
            &text[offset..text[offset..].find('\n').map_or(text.len(), |e| offset + e)],
            written
        );
        prop_assert_eq!(diag.related.len(), names.len() - 2, "one note per other edge");
    }
}
