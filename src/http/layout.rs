//! A layered drawing of a task graph (issue 29): where each task's box goes and the path of
//! each edge, as plain numbers — a pure function of the tasks and their upstreams, drawn by
//! `svg.rs`. Left to right, as Airflow and Argo draw DAGs:
//!
//! 1. each task's layer is the length of the longest path to it from a task without
//!    upstreams (so every edge points right);
//! 2. an edge spanning several layers passes through a waypoint in each layer between, placed
//!    like a task, so it is routed around boxes rather than through them;
//! 3. the order within each layer starts as the DAG lists its tasks, then a few sweeps move
//!    each task (and waypoint) to the mean position of its neighbours in the layer before
//!    (downwards) or after (upwards) — the barycentre heuristic — keeping whichever ordering
//!    crossed the fewest edges.
//!
//! Unknown upstreams are ignored and cycles are broken (a DAG the API server took may still be
//! invalid), so any task list has a drawing.

use std::collections::HashMap;

/// The size of a task's box and the gaps between boxes, in SVG user units.
pub const BOX_WIDTH: f64 = 168.0;
pub const BOX_HEIGHT: f64 = 44.0;
pub const LAYER_GAP: f64 = 64.0;
pub const ROW_GAP: f64 = 20.0;
pub const MARGIN: f64 = 12.0;

/// Barycentre sweeps tried (each one down and one up).
const SWEEPS: usize = 8;

/// One task's box: its top-left corner, in its layer and row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placed {
    pub layer: usize,
    pub row: usize,
    pub x: f64,
    pub y: f64,
}

/// An edge from an upstream task to a downstream one, through its waypoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// from the right edge of `from`'s box to the left edge of `to`'s, left to right
    pub points: Vec<(f64, f64)>,
}

/// The drawing: a box per task (in the tasks' order), the edges, and the canvas size.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub boxes: Vec<Placed>,
    pub edges: Vec<Edge>,
    pub width: f64,
    pub height: f64,
    /// edge crossings between adjacent layers in the chosen ordering
    pub crossings: usize,
}

/// A node of the layered graph: a task, or a waypoint of a long edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Node {
    Task(usize),
    Waypoint { edge: usize, layer: usize },
}

/// Lays out tasks given as `(name, upstream names)`, in their order.
pub fn layout<'a>(tasks: &[(&'a str, Vec<&'a str>)]) -> Layout {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, i))
        .rev() // the first of duplicated names wins
        .collect();
    let mut upstream: Vec<Vec<usize>> = tasks
        .iter()
        .enumerate()
        .map(|(i, (_, deps))| {
            let mut ups: Vec<usize> = deps
                .iter()
                .filter_map(|d| index.get(d).copied())
                .filter(|&j| j != i)
                .collect();
            ups.sort_unstable();
            ups.dedup();
            ups
        })
        .collect();
    break_cycles(&mut upstream);
    let layers = layers_of(&upstream);
    let edges: Vec<(usize, usize)> = upstream
        .iter()
        .enumerate()
        .flat_map(|(to, ups)| ups.iter().map(move |&from| (from, to)))
        .collect();

    // the nodes of each layer, tasks then the waypoints of edges passing through it
    let depth = layers.iter().max().map_or(0, |d| d + 1);
    let mut rows: Vec<Vec<Node>> = vec![Vec::new(); depth];
    for (task, &layer) in layers.iter().enumerate() {
        rows[layer].push(Node::Task(task));
    }
    for (e, &(from, to)) in edges.iter().enumerate() {
        for (layer, row) in rows
            .iter_mut()
            .enumerate()
            .take(layers[to])
            .skip(layers[from] + 1)
        {
            row.push(Node::Waypoint { edge: e, layer });
        }
    }
    // each node's neighbours in the layers before and after it
    let chain = |e: usize| -> Vec<Node> {
        let (from, to) = edges[e];
        let mut c = vec![Node::Task(from)];
        c.extend((layers[from] + 1..layers[to]).map(|layer| Node::Waypoint { edge: e, layer }));
        c.push(Node::Task(to));
        c
    };
    let mut before: HashMap<Node, Vec<Node>> = HashMap::new();
    let mut after: HashMap<Node, Vec<Node>> = HashMap::new();
    for e in 0..edges.len() {
        for pair in chain(e).windows(2) {
            after.entry(pair[0]).or_default().push(pair[1]);
            before.entry(pair[1]).or_default().push(pair[0]);
        }
    }
    let ordered = order(rows, &before, &after);
    let crossings = crossings(&ordered, &after);

    // coordinates: a column per layer, a row per position
    let mut at: HashMap<Node, (usize, usize)> = HashMap::new();
    for (layer, row) in ordered.iter().enumerate() {
        for (position, node) in row.iter().enumerate() {
            at.insert(*node, (layer, position));
        }
    }
    let corner = |layer: usize, row: usize| {
        (
            MARGIN + layer as f64 * (BOX_WIDTH + LAYER_GAP),
            MARGIN + row as f64 * (BOX_HEIGHT + ROW_GAP),
        )
    };
    let boxes: Vec<Placed> = (0..tasks.len())
        .map(|t| {
            let (layer, row) = at.get(&Node::Task(t)).copied().unwrap_or_default();
            let (x, y) = corner(layer, row);
            Placed { layer, row, x, y }
        })
        .collect();
    let middle = |node: Node| {
        let (layer, row) = at.get(&node).copied().unwrap_or_default();
        let (x, y) = corner(layer, row);
        (x, y + BOX_HEIGHT / 2.0)
    };
    let edges = edges
        .iter()
        .enumerate()
        .map(|(e, &(from, to))| {
            let nodes = chain(e);
            let mut points = Vec::with_capacity(nodes.len() * 2);
            for (k, node) in nodes.iter().enumerate() {
                let (x, y) = middle(*node);
                match node {
                    Node::Task(_) if k == 0 => points.push((x + BOX_WIDTH, y)),
                    Node::Task(_) => points.push((x, y)),
                    // a waypoint is crossed along the width a box would take
                    Node::Waypoint { .. } => {
                        points.push((x, y));
                        points.push((x + BOX_WIDTH, y));
                    }
                }
            }
            Edge { from, to, points }
        })
        .collect();
    let widest = ordered.iter().map(Vec::len).max().unwrap_or(0);
    Layout {
        boxes,
        edges,
        width: 2.0 * MARGIN + depth as f64 * BOX_WIDTH + depth.saturating_sub(1) as f64 * LAYER_GAP,
        height: 2.0 * MARGIN
            + widest as f64 * BOX_HEIGHT
            + widest.saturating_sub(1) as f64 * ROW_GAP,
        crossings,
    }
}

/// Drops the upstream edges that close a cycle (found by a depth-first walk in task order).
fn break_cycles(upstream: &mut [Vec<usize>]) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; upstream.len()];
    for start in 0..upstream.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // (task, next upstream to look at)
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::Open;
        while let Some(&mut (task, ref mut next)) = stack.last_mut() {
            if let Some(&up) = upstream[task].get(*next) {
                match mark[up] {
                    Mark::Open => {
                        upstream[task].remove(*next);
                    }
                    Mark::New => {
                        *next += 1;
                        mark[up] = Mark::Open;
                        stack.push((up, 0));
                    }
                    Mark::Done => *next += 1,
                }
            } else {
                mark[task] = Mark::Done;
                stack.pop();
            }
        }
    }
}

/// Each task's layer: the longest path to it from a task without upstreams (acyclic input).
fn layers_of(upstream: &[Vec<usize>]) -> Vec<usize> {
    let mut layer: Vec<Option<usize>> = vec![None; upstream.len()];
    for start in 0..upstream.len() {
        let mut stack = vec![start];
        while let Some(&task) = stack.last() {
            if layer[task].is_some() {
                stack.pop();
                continue;
            }
            let pending: Vec<usize> = upstream[task]
                .iter()
                .copied()
                .filter(|&u| layer[u].is_none())
                .collect();
            if pending.is_empty() {
                layer[task] = Some(
                    upstream[task]
                        .iter()
                        .filter_map(|&u| layer[u])
                        .map(|l| l + 1)
                        .max()
                        .unwrap_or(0),
                );
                stack.pop();
            } else {
                stack.extend(pending);
            }
        }
    }
    layer.into_iter().map(Option::unwrap_or_default).collect()
}

/// The barycentre sweeps: the ordering with the fewest crossings seen (the first on ties).
fn order(
    mut rows: Vec<Vec<Node>>,
    before: &HashMap<Node, Vec<Node>>,
    after: &HashMap<Node, Vec<Node>>,
) -> Vec<Vec<Node>> {
    let mut best = rows.clone();
    let mut fewest = crossings(&rows, after);
    for _ in 0..SWEEPS {
        if fewest == 0 {
            break;
        }
        for layer in 1..rows.len() {
            let (done, rest) = rows.split_at_mut(layer);
            reorder(&mut rest[0], &done[layer - 1], before);
        }
        for layer in (0..rows.len().saturating_sub(1)).rev() {
            let (rest, done) = rows.split_at_mut(layer + 1);
            reorder(&mut rest[layer], &done[0], after);
        }
        let now = crossings(&rows, after);
        if now < fewest {
            fewest = now;
            best = rows.clone();
        }
    }
    best
}

/// Sorts `row` by the mean position of each node's neighbours in `fixed` (a node without
/// neighbours there keeps its place).
fn reorder(row: &mut [Node], fixed: &[Node], neighbours: &HashMap<Node, Vec<Node>>) {
    let position: HashMap<Node, usize> = fixed.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut keyed: Vec<(f64, usize, Node)> = row
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let near: Vec<usize> = neighbours
                .get(node)
                .into_iter()
                .flatten()
                .filter_map(|n| position.get(n).copied())
                .collect();
            let key = if near.is_empty() {
                i as f64
            } else {
                near.iter().sum::<usize>() as f64 / near.len() as f64
            };
            (key, i, *node)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (slot, (_, _, node)) in row.iter_mut().zip(keyed) {
        *slot = node;
    }
}

/// Edge crossings between each pair of adjacent layers.
fn crossings(rows: &[Vec<Node>], after: &HashMap<Node, Vec<Node>>) -> usize {
    let mut total = 0;
    for pair in rows.windows(2) {
        let position: HashMap<Node, usize> =
            pair[1].iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let segments: Vec<(usize, usize)> = pair[0]
            .iter()
            .enumerate()
            .flat_map(|(i, node)| {
                after
                    .get(node)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| position.get(n).map(|&j| (i, j)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (k, a) in segments.iter().enumerate() {
            for b in &segments[k + 1..] {
                if (a.0 < b.0 && a.1 > b.1) || (a.0 > b.0 && a.1 < b.1) {
                    total += 1;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tasks(spec: &[(&'static str, &[&'static str])]) -> Vec<(&'static str, Vec<&'static str>)> {
        spec.iter().map(|(n, d)| (*n, d.to_vec())).collect()
    }

    #[test]
    fn a_chain_reads_left_to_right() {
        let l = layout(&tasks(&[("a", &[]), ("b", &["a"]), ("c", &["b"])]));
        let layers: Vec<usize> = l.boxes.iter().map(|b| b.layer).collect();
        assert_eq!(layers, [0, 1, 2]);
        assert_eq!(l.edges.len(), 2);
        assert_eq!(l.crossings, 0);
        assert!(l.boxes.iter().all(|b| b.row == 0));
    }

    #[test]
    fn a_long_edge_goes_around_the_tasks_between() {
        // a → b → c and a → c: the edge a → c passes a waypoint in b's layer, below b
        let l = layout(&tasks(&[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])]));
        let long = l
            .edges
            .iter()
            .find(|e| (e.from, e.to) == (0, 2))
            .expect("a → c");
        assert_eq!(long.points.len(), 4, "{long:?}");
        let b = l.boxes[1];
        let (_, y) = long.points[1];
        assert!(
            !(b.y..b.y + BOX_HEIGHT).contains(&y),
            "through b's box: {long:?}"
        );
    }

    #[test]
    fn the_sweeps_untangle_what_the_listing_crossed() {
        // listed so that the first order crosses: x1 → y2, x2 → y1
        let l = layout(&tasks(&[
            ("x1", &[]),
            ("x2", &[]),
            ("y1", &["x2"]),
            ("y2", &["x1"]),
        ]));
        assert_eq!(l.crossings, 0);
    }

    #[test]
    fn unknown_upstreams_and_cycles_still_draw() {
        let l = layout(&tasks(&[
            ("a", &["c", "nowhere", "a"]),
            ("b", &["a"]),
            ("c", &["b"]),
        ]));
        assert_eq!(l.boxes.len(), 3);
        assert_eq!(
            l.edges.len(),
            2,
            "one edge of the cycle dropped: {:?}",
            l.edges
        );
    }

    /// Any DAG: task i may depend on tasks before it.
    fn dags() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
        (1usize..24)
            .prop_flat_map(|n| {
                proptest::collection::vec(
                    proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                    n,
                )
            })
            .prop_map(|deps| {
                deps.iter()
                    .enumerate()
                    .map(|(i, ds)| {
                        let ups = if i == 0 {
                            Vec::new()
                        } else {
                            ds.iter().map(|d| format!("t{}", d.index(i))).collect()
                        };
                        (format!("t{i}"), ups)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn every_drawing_is_sound(dag in dags()) {
            let input: Vec<(&str, Vec<&str>)> = dag
                .iter()
                .map(|(n, d)| (n.as_str(), d.iter().map(String::as_str).collect()))
                .collect();
            let l = layout(&input);
            prop_assert_eq!(l.boxes.len(), dag.len());
            // no two boxes share a place, and all are on the canvas
            let mut places: Vec<(usize, usize)> = l.boxes.iter().map(|b| (b.layer, b.row)).collect();
            places.sort_unstable();
            places.dedup();
            prop_assert_eq!(places.len(), dag.len());
            for b in &l.boxes {
                prop_assert!(b.x >= 0.0 && b.x + BOX_WIDTH <= l.width);
                prop_assert!(b.y >= 0.0 && b.y + BOX_HEIGHT <= l.height);
            }
            // an edge per distinct upstream, pointing right, never through a box
            let distinct: usize = input.iter().map(|(_, d)| {
                let mut d = d.clone(); d.sort_unstable(); d.dedup(); d.len()
            }).sum();
            prop_assert_eq!(l.edges.len(), distinct);
            for e in &l.edges {
                prop_assert!(l.boxes[e.from].layer < l.boxes[e.to].layer);
                prop_assert!(e.points.windows(2).all(|p| p[0].0 <= p[1].0));
                for &(x, y) in e.points.iter().skip(1).take(e.points.len().saturating_sub(2)) {
                    for b in &l.boxes {
                        let inside = x > b.x && x < b.x + BOX_WIDTH && y > b.y && y < b.y + BOX_HEIGHT;
                        prop_assert!(!inside, "waypoint ({x}, {y}) inside a box");
                    }
                }
            }
            // the sweeps never make it worse than the listing's order
            prop_assert!(l.crossings <= first_order_crossings(&input));
            // and the same input draws the same
            prop_assert_eq!(layout(&input), l);
        }
    }

    /// The crossings of the first ordering (the tasks as listed), for comparison.
    fn first_order_crossings(tasks: &[(&str, Vec<&str>)]) -> usize {
        let mut upstream: Vec<Vec<usize>> = tasks
            .iter()
            .map(|(_, d)| {
                let mut u: Vec<usize> = d
                    .iter()
                    .filter_map(|n| tasks.iter().position(|(m, _)| m == n))
                    .collect();
                u.sort_unstable();
                u.dedup();
                u
            })
            .collect();
        break_cycles(&mut upstream);
        let layers = layers_of(&upstream);
        let mut rows: Vec<Vec<Node>> = vec![Vec::new(); layers.iter().max().map_or(0, |d| d + 1)];
        for (t, &l) in layers.iter().enumerate() {
            rows[l].push(Node::Task(t));
        }
        let mut after: HashMap<Node, Vec<Node>> = HashMap::new();
        let mut e = 0;
        for (to, ups) in upstream.iter().enumerate() {
            for &from in ups {
                let mut chain = vec![Node::Task(from)];
                for (layer, row) in rows
                    .iter_mut()
                    .enumerate()
                    .take(layers[to])
                    .skip(layers[from] + 1)
                {
                    row.push(Node::Waypoint { edge: e, layer });
                    chain.push(Node::Waypoint { edge: e, layer });
                }
                chain.push(Node::Task(to));
                for p in chain.windows(2) {
                    after.entry(p[0]).or_default().push(p[1]);
                }
                e += 1;
            }
        }
        crossings(&rows, &after)
    }
}
