//! The step DAG: building it from `needs`, ordering it, and finding cycles with a real path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diagnostic::Diagnostic;
use crate::model::Step;

/// Build the graph of one section (main steps or `finally` steps). Node `i` of the graph is
/// step `base + i`. Returns the graph, each step's direct needs (global indices), and whether
/// some `needs` could not be resolved.
pub(super) fn build(
    steps: &[&Step],
    base: usize,
    index_by_id: &HashMap<String, usize>,
    diags: &mut Vec<Diagnostic>,
    is_finally: bool,
) -> (DiGraph<usize, ()>, Vec<Vec<usize>>, bool) {
    let mut g = DiGraph::with_capacity(steps.len(), steps.len());
    for i in 0..steps.len() {
        g.add_node(base + i);
    }
    let mut needs_out = vec![Vec::new(); steps.len()];
    let mut unresolved = false;
    for (i, step) in steps.iter().enumerate() {
        let mut seen = HashSet::new();
        for need in &step.needs {
            let Some(&target) = index_by_id.get(&need.value) else {
                unresolved = true;
                let mut d = Diagnostic::new(
                    "unknown-step",
                    format!(
                        "step `{}` needs `{}`, which is not a step",
                        step.id.value, need.value
                    ),
                    need.span,
                );
                d = match super::suggest_step(&need.value, index_by_id) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help("name the id of a step defined in this runbook"),
                };
                diags.push(d);
                continue;
            };
            if !seen.insert(target) {
                diags.push(
                    Diagnostic::new(
                        "duplicate-need",
                        format!(
                            "step `{}` lists `{}` twice in `needs`",
                            step.id.value, need.value
                        ),
                        need.span,
                    )
                    .with_help("remove the repetition"),
                );
                continue;
            }
            let in_section = target >= base && target < base + steps.len();
            if !in_section {
                if is_finally {
                    // Every main step has ended before `finally` starts: already satisfied.
                    continue;
                }
                unresolved = true;
                diags.push(
                    Diagnostic::new(
                        "needs-finally",
                        format!("step `{}` needs `{}`, a `finally` step", step.id.value, need.value),
                        need.span,
                    )
                    .with_help("`finally` steps run after every other step; a main step cannot wait for one"),
                );
                continue;
            }
            needs_out[i].push(target);
            g.add_edge(NodeIndex::new(target - base), NodeIndex::new(i), ());
        }
    }
    (g, needs_out, unresolved)
}

/// A topological order that keeps file order among independent steps, or `None` (with a
/// diagnostic per cycle, naming its path) when there is a cycle.
pub(super) fn order(
    g: &DiGraph<usize, ()>,
    steps: &[&Step],
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<usize>> {
    let n = g.node_count();
    let mut indegree: Vec<usize> = (0..n)
        .map(|i| {
            g.neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        out.push(g[NodeIndex::new(i)]);
        for next in g.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            let j = next.index();
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    if out.len() == n {
        return Some(out);
    }
    report_cycles(g, steps, diags);
    None
}

fn report_cycles(g: &DiGraph<usize, ()>, steps: &[&Step], diags: &mut Vec<Diagnostic>) {
    for scc in tarjan_scc(g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let start = *scc.iter().min_by_key(|n| n.index()).unwrap_or(&scc[0]);
        // Walk `needs` (incoming edges) from `start` back to itself: the shortest cycle.
        let path = shortest_cycle(g, start, &members);
        let names: Vec<&str> = path
            .iter()
            .map(|n| steps[n.index()].id.value.as_str())
            .collect();
        let mut cycle_text = names.join(" → ");
        cycle_text.push_str(" → ");
        cycle_text.push_str(names[0]);
        let need_span = |from: NodeIndex, to: NodeIndex| {
            // `needs` may write an id's `-` as `_`.
            let to_key = super::template_key(&steps[to.index()].id.value);
            steps[from.index()]
                .needs
                .iter()
                .find(|n| super::template_key(&n.value) == to_key)
                .map_or(steps[from.index()].id.span, |n| n.span)
        };
        let next = |k: usize| path[(k + 1) % path.len()];
        let mut d = Diagnostic::new(
            "cycle",
            format!("dependency cycle: {cycle_text}"),
            need_span(path[0], next(0)),
        )
        .with_label(format!("`{}` needs `{}`", names[0], steps[next(0).index()].id.value))
        .with_help("a step cannot wait, directly or through others, for itself: remove one of these `needs`");
        for k in 1..path.len() {
            d = d.with_related(
                need_span(path[k], next(k)),
                format!("`{}` needs `{}`", names[k], steps[next(k).index()].id.value),
            );
        }
        diags.push(d);
    }
}

/// The shortest cycle through `start` inside an SCC, following `needs` (edges backwards).
fn shortest_cycle(
    g: &DiGraph<usize, ()>,
    start: NodeIndex,
    members: &HashSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::new();
    for n in g.neighbors_directed(start, Direction::Incoming) {
        if n == start {
            return vec![start];
        }
        if members.contains(&n) && !prev.contains_key(&n) {
            prev.insert(n, start);
            queue.push_back(n);
        }
    }
    while let Some(cur) = queue.pop_front() {
        for n in g.neighbors_directed(cur, Direction::Incoming) {
            if n == start {
                let mut path = vec![cur];
                let mut at = cur;
                while let Some(&p) = prev.get(&at) {
                    if p == start {
                        break;
                    }
                    path.push(p);
                    at = p;
                }
                path.push(start);
                path.reverse();
                return path;
            }
            if members.contains(&n) && !prev.contains_key(&n) {
                prev.insert(n, cur);
                queue.push_back(n);
            }
        }
    }
    vec![start]
}

/// Group an ordered section into levels: a step's level is one more than its deepest need.
pub(super) fn levels(g: &DiGraph<usize, ()>, order: &[usize]) -> Vec<Vec<usize>> {
    let base = g.node_weights().copied().min().unwrap_or(0);
    let mut depth = vec![0usize; g.node_count()];
    let mut levels: Vec<Vec<usize>> = Vec::new();
    for &i in order {
        let local = i - base;
        let d = g
            .neighbors_directed(NodeIndex::new(local), Direction::Incoming)
            .map(|p| depth[p.index()] + 1)
            .max()
            .unwrap_or(0);
        depth[local] = d;
        if levels.len() <= d {
            levels.resize_with(d + 1, Vec::new);
        }
        levels[d].push(i);
    }
    levels
}

/// Steps reachable backwards (upstream) from `i`.
pub(super) fn ancestors(g: &DiGraph<usize, ()>, i: usize) -> Vec<usize> {
    walk(g, i, Direction::Incoming)
}

/// Steps reachable forwards (downstream) from `i`.
pub(super) fn descendants(g: &DiGraph<usize, ()>, i: usize) -> Vec<usize> {
    walk(g, i, Direction::Outgoing)
}

fn walk(g: &DiGraph<usize, ()>, i: usize, dir: Direction) -> Vec<usize> {
    if i >= g.node_count() {
        return Vec::new();
    }
    let mut seen = vec![false; g.node_count()];
    let mut stack = vec![NodeIndex::new(i)];
    let mut out = Vec::new();
    while let Some(n) = stack.pop() {
        for m in g.neighbors_directed(n, dir) {
            if !seen[m.index()] {
                seen[m.index()] = true;
                out.push(g[m]);
                stack.push(m);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Whether `from` is upstream of `to`, walking back from `to` only through steps deeper than
/// `from` (`depth`: a step's level, indexed by node): every step on a path of `needs` between
/// the two is, so the walk stays between them instead of crossing the whole graph, which keeps
/// checking every reference of a long chain linear.
pub(super) fn is_upstream_by_depth(
    g: &DiGraph<usize, ()>,
    from: usize,
    to: usize,
    depth: impl Fn(usize) -> usize,
) -> bool {
    let n = g.node_count();
    if from >= n || to >= n || from == to {
        return false;
    }
    let floor = depth(from);
    if depth(to) <= floor {
        return false;
    }
    let mut seen = HashSet::new();
    let mut stack = vec![NodeIndex::new(to)];
    while let Some(at) = stack.pop() {
        for m in g.neighbors_directed(at, Direction::Incoming) {
            let k = m.index();
            if k == from {
                return true;
            }
            if depth(k) > floor && seen.insert(k) {
                stack.push(m);
            }
        }
    }
    false
}

/// The longest chain by `weight`, following `order`.
pub(super) fn critical_path(
    g: &DiGraph<usize, ()>,
    order: &[usize],
    weight: impl Fn(usize) -> Duration,
) -> (Vec<usize>, Duration) {
    let n = g.node_count();
    let mut finish = vec![Duration::ZERO; n];
    let mut prev: Vec<Option<usize>> = vec![None; n];
    for &i in order {
        let (best, from) = g
            .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            .map(|p| (finish[p.index()], Some(p.index())))
            .max_by_key(|(d, _)| *d)
            .unwrap_or((Duration::ZERO, None));
        finish[i] = best.saturating_add(weight(i));
        prev[i] = from;
    }
    let Some(end) = (0..n).max_by_key(|&i| finish[i]) else {
        return (Vec::new(), Duration::ZERO);
    };
    let mut path = vec![end];
    let mut at = end;
    while let Some(p) = prev[at] {
        path.push(p);
        at = p;
    }
    path.reverse();
    (path, finish[end])
}

/// An irreversible step (`irreversible` at `irr`) whose every upstream approval (`approvals`)
/// is guarded by a `when:` the step itself does not share: when the guard is false the
/// approval is skipped and the point of no return would run unapproved, so the runbook is
/// refused. An approval guarded exactly like its irreversible step is fine: both run or both
/// are skipped (and at run time an irreversible step whose approvals were all skipped is blocked
/// anyway).
pub(super) fn guarded_approvals(
    c: &super::Compiled,
    i: usize,
    approvals: &[usize],
    irr: crate::model::Span,
) -> Option<Diagnostic> {
    let own = c.step(i).when.as_ref().map(|w| w.value.trim());
    let guarded: Vec<(usize, crate::model::Span)> = approvals
        .iter()
        .map(|&u| {
            let when = c
                .step(u)
                .when
                .as_ref()
                .filter(|w| Some(w.value.trim()) != own);
            (u, when.map(|w| w.span))
        })
        .map(|(u, w)| w.map(|w| (u, w)))
        .collect::<Option<_>>()?;
    let (&(first, span), rest) = guarded.split_first()?;
    let names: Vec<String> = guarded
        .iter()
        .map(|&(u, _)| format!("`{}`", c.steps[u].id))
        .collect();
    let mut d = Diagnostic::new(
        "guarded-approval",
        format!(
            "irreversible step `{}` is approved only by {}, which a `when:` guard can skip",
            c.steps[i].id,
            names.join(", ")
        ),
        span,
    )
    .with_label(format!(
        "when this is false, `{}` is skipped and `{}` would run unapproved",
        c.steps[first].id, c.steps[i].id
    ))
    .with_related(irr, "point of no return")
    .with_help(format!(
        "remove the `when:` from `{}` (an approval before a point of no return is always asked), give `{}` the same `when:`, or add an unguarded `approve` step to its `needs`",
        c.steps[first].id, c.steps[i].id
    ));
    for &(u, w) in rest {
        d = d.with_related(w, format!("`{}` is guarded too", c.steps[u].id));
    }
    Some(d)
}
